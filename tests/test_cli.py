"""The ``artrt`` command line: bad arguments are one line on stderr with exit code 2, found
before any work starts (no data loaded, no kernel check, no checkpoint read), and the
progress bar stays out of log files."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from artrt import cli
from artrt import data as artrt_data
from artrt import train as training

TRAIN = ["train", "--model", "made", "--data", "digits8x8", "--steps", "2", "--eval-every",
         "2", "--batch-size", "8", "--set", "hidden=8", "--samples", "0", "--no-progress"]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _work_started(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")


@pytest.fixture
def no_work(monkeypatch):
    """Loading data, checking kernels or reading a checkpoint fails the test."""
    monkeypatch.setattr(artrt_data, "load", _work_started)
    monkeypatch.setattr(cli, "check_backends", _work_started)
    monkeypatch.setattr(training, "load_checkpoint", _work_started)


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "tpu"], "--device 'tpu': want cpu, cuda or cuda:N"),
    (["--device", "cuda"], "--device 'cuda': no CUDA device is available"),
    (["--device", "cuda:0"], "--device 'cuda:0': no CUDA device is available"),
    (["--samples", "-1"], "--samples must be an int >= 0"),
])
def test_train_arguments_checked_before_any_work(tmp_path, capsys, monkeypatch, no_work, argv,
                                                 message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _one_line_error(capsys, [*TRAIN, "--out", str(tmp_path / "run"), *argv])
    assert message in err
    assert not (tmp_path / "run").exists()


def test_unwritable_output_checked_before_any_work(tmp_path, capsys, no_work):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _one_line_error(capsys, [*TRAIN, "--device", "cpu", "--out", str(blocker / "run")])
    assert f"--out {blocker / 'run'}: cannot write in this folder" in err
    err = _one_line_error(capsys, [*TRAIN, "--device", "cpu", "--out", str(blocker)])
    assert f"--out {blocker}: is a file, not a folder" in err


def test_read_only_output_folder_checked_before_any_work(tmp_path, capsys, no_work):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("this user (root?) can write into a read-only folder")
        err = _one_line_error(capsys, [*TRAIN, "--device", "cpu", "--out", str(folder)])
        assert f"--out {folder}: cannot write in this folder (Permission denied)" in err
    finally:
        folder.chmod(0o755)


def test_sample_arguments_checked_before_loading(tmp_path, capsys, no_work):
    folder = tmp_path / "grids"
    folder.mkdir()
    base = ["sample", "--ckpt", str(tmp_path / "ckpt.pt")]
    err = _one_line_error(capsys, [*base, "--out", str(folder), "--device", "cpu"])
    assert f"--out {folder}: is a folder" in err
    png = str(tmp_path / "g.png")
    assert "n must be an int >= 1, got 0" in _one_line_error(capsys, [*base, "-n", "0",
                                                                       "--out", png])
    assert "--device 'tpu'" in _one_line_error(capsys, [*base, "--device", "tpu", "--out", png])


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--steps", "-1"], "--steps must be >= 0, got -1"),
])
def test_demo_arguments_checked_before_the_kernel_check(tmp_path, capsys, no_work, argv,
                                                        message):
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path / "demo"), *argv])
    assert f"artrt demo: error: {message}" in err


def test_demo_replaces_its_previous_run(tmp_path, capsys, monkeypatch):
    """The demo's folder is its own: a second ``artrt demo`` replaces the first run (and
    says so) instead of being refused as an existing run."""
    calls = []

    def fake_train(*args, **kwargs):
        calls.append(kwargs)
        return {"step": 0, "test_nll": 1.0, "test_bpd": 0.1, "ckpt": ""}

    monkeypatch.setattr(cli, "check_backends", lambda seed: 0)
    monkeypatch.setattr(training, "train", fake_train)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"")
    assert cli.main(["demo", "--steps", "0", "--out", str(out)]) == 0
    assert calls[0]["overwrite"] is True
    assert f"replacing the run in {out}/" in capsys.readouterr().out


def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """tqdm's disable=None: no bar (so no carriage returns) when stderr is a file or a
    pipe, the bar on a terminal."""
    pytest.importorskip("sklearn", reason="digits8x8 needs the [data] extra (scikit-learn)")
    kw = dict(data="digits8x8", steps=3, eval_every=3, batch_size=8, device="cpu",
              overrides=["hidden=8"], samples=0, progress=True)
    training.train("made", out=tmp_path / "log", **kw)
    err = capsys.readouterr().err
    assert "\r" not in err and "made on digits8x8" not in err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    training.train("made", out=tmp_path / "tty", **kw)
    assert "\r" in terminal.getvalue() and "made on digits8x8" in terminal.getvalue()
