"""``artrt train`` and ``artrt sample``: the loss goes down, metrics and checkpoints are
written (atomically, with a checksum), resume reproduces a straight run bit for bit and
refuses what would break that, the PNG grid is valid, bad input gives clear errors, and a
2-process gloo run under torchrun finishes."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn", reason="digits8x8 needs the [data] extra (scikit-learn)")

from artrt import cli  # noqa: E402
from artrt import data as artrt_data  # noqa: E402
from artrt.grid import grid_image, png_bytes  # noqa: E402
from artrt.train import (  # noqa: E402
    CKPT_HEADER,
    CheckpointError,
    _load_verified,
    batch_indices,
    evaluate,
    load_checkpoint,
    parse_overrides,
    read_checkpoint,
    save_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "made": ["hidden=32,32", "num_masks=3", "ordering=random"],
    "pixelcnn": ["channels=8", "blocks=1", "kernel_size=3", "head_channels=8"],
}


def _png_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, colour type) of a PNG, after checking its signature and IHDR CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF
    width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    assert depth == 8 and data.endswith(b"IEND\xaeB`\x82")
    return width, height, colour


def test_cli_train_loss_goes_down_and_writes_files(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "made", "--data", "digits8x8", "--steps", "60",
            "--eval-every", "20", "--batch-size", "32", "--lr", "3e-3", "--out", str(out),
            "--samples", "20", "--no-progress", "--set", "hidden=64"]
    assert cli.main(args) == 0
    assert "bits/dim" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    for r in rows:
        assert math.isclose(r["test_bpd"], r["test_nll"] / (64 * math.log(2)))
    assert rows[-1]["test_nll"] < rows[0]["test_nll"] - 5
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    model, ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["model"] == "made" and ckpt["data"] == "digits8x8" and ckpt["step"] == 60
    assert ckpt["config"]["hidden"] == (64,) and model.config.num_classes == 10
    assert not list(out.glob("*.tmp"))
    # Conditional: 20 samples over 10 classes -> 2 per row, 10 rows of 4x-scaled 8x8 cells.
    assert _png_size((out / "samples.png").read_bytes()) == (2 * 33 + 1, 10 * 33 + 1, 0)

    grid = tmp_path / "grid.png"
    assert cli.main(["sample", "--ckpt", str(out / "ckpt.pt"), "-n", "30", "--out", str(grid),
                     "--device", "cpu", "--seed", "3"]) == 0
    assert _png_size(grid.read_bytes()) == (3 * 33 + 1, 10 * 33 + 1, 0)


@pytest.mark.parametrize(("model", "ema"), [("pixelcnn", 0.0), ("made", 0.0), ("made", 0.9)])
def test_resume_reproduces_a_straight_run(tmp_path, model, ema):
    kw = dict(data="digits8x8", batch_size=16, lr=2e-3, device="cpu", eval_every=3, seed=5,
              overrides=TINY[model], samples=0, progress=False, ema=ema)
    train(model, steps=8, out=tmp_path / "straight", **kw)
    train(model, steps=4, out=tmp_path / "split", **kw)
    train(model, steps=8, out=tmp_path / "split", resume=True, **kw)
    a, b = (read_checkpoint(tmp_path / d / "ckpt.pt") for d in ("straight", "split"))
    assert a["step"] == b["step"] == 8
    states = ["model_state"] + (["optimizer_model_state"] if ema else [])
    for state in states:
        for k, v in a[state].items():
            assert torch.equal(v, b[state][k]), (state, k)
    for k, st in a["optimizer_state"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["optimizer_state"]["state"][k][name]), (k, name)
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4, 6, 8]


def test_ema_averages_the_trajectory_without_changing_it(tmp_path):
    """With --ema the optimizer's weights are those of a run without it, and the saved model
    is their moving average: avg_0 = w_0, avg_s+1 = d_s avg_s + (1 - d_s) w_s+1 with
    d_s = min(ema, (1 + s) / (10 + s))."""
    ema, steps = 0.6, 4
    kw = dict(data="digits8x8", batch_size=8, lr=1e-2, device="cpu", eval_every=1, seed=2,
              overrides=TINY["pixelcnn"], samples=0, progress=False)
    train("pixelcnn", steps=steps, out=tmp_path / "ema", ema=ema, **kw)
    got = read_checkpoint(tmp_path / "ema" / "ckpt.pt")
    assert got["train"]["ema"] == ema
    weights = []
    for s in range(steps + 1):  # w_0 .. w_steps: the plain run's weights after s steps
        train("pixelcnn", steps=s, out=tmp_path / "plain", overwrite=True, **kw)
        weights.append(read_checkpoint(tmp_path / "plain" / "ckpt.pt")["model_state"])
    assert "optimizer_model_state" not in read_checkpoint(tmp_path / "plain" / "ckpt.pt")
    for k, v in weights[-1].items():
        assert torch.equal(got["optimizer_model_state"][k], v), k
    avg = {k: v.clone() for k, v in weights[0].items()}
    for s in range(steps):
        d = min(ema, (1 + s) / (10 + s))
        for k in avg:
            if avg[k].is_floating_point():
                avg[k] = d * avg[k] + (1 - d) * weights[s + 1][k]
            else:
                avg[k] = weights[s + 1][k]
    moved = 0
    for k, v in avg.items():
        torch.testing.assert_close(got["model_state"][k], v, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(got["model_state"][k], weights[-1][k])
    assert moved  # the average is not the last weights
    # the test nll of the metrics is the average's
    net, _ = load_checkpoint(tmp_path / "ema" / "ckpt.pt")
    last = json.loads((tmp_path / "ema" / "metrics.jsonl").read_text().splitlines()[-1])
    test_set = artrt_data.load("digits8x8", "test")
    assert evaluate(net, test_set, torch.device("cpu")) == pytest.approx(last["test_nll"],
                                                                        rel=1e-6)


def test_batch_order_is_a_function_of_seed_and_step():
    one_epoch = torch.cat([batch_indices(10, 4, 1, s) for s in range(5)])  # 20 = 2 epochs
    assert sorted(one_epoch[:10].tolist()) == list(range(10))
    assert sorted(one_epoch[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 1, 3), one_epoch[12:16])
    assert not torch.equal(batch_indices(10, 4, 2, 0), batch_indices(10, 4, 1, 0))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(4)})
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(4)})
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert _load_verified(path)["step"] == 1


def test_grid_image_layouts():
    rgb = grid_image(torch.randint(0, 256, (5, 3, 4, 4)), 256, cols=2, scale=2)
    assert rgb.shape == (3 * 9 + 1, 2 * 9 + 1, 3)
    seq = grid_image(torch.randint(0, 256, (3, 1, 50)), 256, cols=1)
    assert seq.shape == (3 * 9 + 1, 52, 1)  # strips 8 rows tall, 50 wide
    binary = grid_image(torch.ones(1, 1, 2, 2, dtype=torch.int64), 2, cols=1, scale=1, pad=0)
    assert binary.flatten().tolist() == [255] * 4
    width, height, colour = _png_size(png_bytes(rgb))
    assert (width, height, colour) == (19, 28, 2)


def test_png_decodes_with_pillow(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    img = grid_image(torch.randint(0, 17, (4, 1, 8, 8)), 17, cols=2, scale=1, pad=0)
    (tmp_path / "g.png").write_bytes(png_bytes(img))
    with image_mod.open(tmp_path / "g.png") as im:
        assert im.size == (16, 16) and im.mode == "L"
        assert im.tobytes() == bytes(img.flatten().tolist())


def test_parse_overrides_types_and_errors():
    from artrt.models import MADEConfig, WaveNetConfig

    got = parse_overrides(MADEConfig, ["hidden=(16, 8)", "num_masks=2", "ordering=random"])
    assert got == {"hidden": (16, 8), "num_masks": 2, "ordering": "random"}
    assert parse_overrides(WaveNetConfig, ["positional=none"]) == {"positional": None}
    assert parse_overrides(WaveNetConfig, ["positional=true"]) == {"positional": True}
    for bad, match in [(["nope=1"], "no field 'nope'"), (["shape=1,8,8"], "data set"),
                       (["hidden=abc"], "want int"), (["num_masks"], "key=value")]:
        with pytest.raises(ValueError, match=match):
            parse_overrides(MADEConfig, bad)


def _error(capsys, *args: str) -> str:
    assert cli.main(list(args)) == 2
    return capsys.readouterr().err


def test_clear_errors(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["--steps", "1", "--samples", "0", "--no-progress", "--out", out]
    assert "unknown model 'nope'" in _error(capsys, "train", "--model", "nope", "--data",
                                            "digits8x8", *base)
    assert "unknown data set 'nope'" in _error(capsys, "train", "--model", "made", "--data",
                                               "nope", *base)
    assert "no field 'widht'" in _error(capsys, "train", "--model", "made", "--data",
                                        "digits8x8", "--set", "widht=3", *base)
    assert "no checkpoint" in _error(capsys, "train", "--model", "made", "--data",
                                     "digits8x8", "--resume", *base)
    for bad in ("1", "-0.1", "nan"):
        assert f"--ema must be a decay in [0, 1) (0: no averaging), got {float(bad)}" in _error(
            capsys, "train", "--model", "made", "--data", "digits8x8", "--ema", bad, *base)
    assert cli.main(["train", "--model", "made", "--data", "digits8x8", "--set", "hidden=8",
                     *base]) == 0
    capsys.readouterr()
    more = [*base, "--steps", "2"]
    assert "holds a 'made' model, not 'pixelcnn'" in _error(
        capsys, "train", "--model", "pixelcnn", "--data", "digits8x8", "--resume", *more)
    assert "--set hidden=(9,) differs from the config saved in" in _error(
        capsys, "train", "--model", "made", "--data", "digits8x8", "--resume",
        "--set", "hidden=9", *more)

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert "is not an artrt checkpoint" in _error(capsys, "sample", "--ckpt", str(junk))
    plain = tmp_path / "plain.pt"
    torch.save({"model_state": {}}, plain)
    assert "is not an artrt checkpoint" in _error(capsys, "sample", "--ckpt", str(plain))

    ckpt = read_checkpoint(Path(out) / "ckpt.pt")
    ckpt["model"] = "resnet"
    torch.save(ckpt, tmp_path / "unknown.pt")
    assert "unknown model 'resnet'" in _error(capsys, "sample", "--ckpt",
                                              str(tmp_path / "unknown.pt"))
    ckpt["model"] = "made"
    ckpt["config"]["hidden"] = (16,)
    torch.save(ckpt, tmp_path / "misfit.pt")
    with pytest.raises(CheckpointError, match="does not fit model 'made'"):
        load_checkpoint(tmp_path / "misfit.pt")
    ckpt["model"] = "pixelcnn"
    ckpt["config"] = {}
    torch.save(ckpt, tmp_path / "other.pt")
    assert "does not fit model 'pixelcnn'" in _error(capsys, "sample", "--ckpt",
                                                     str(tmp_path / "other.pt"))



def _tiny_run(out: Path, steps: int = 2, **kw) -> dict:
    """MADE (hidden=8) on digits8x8: seed 1, batch 8, lr 1e-3, an evaluation every 2 steps."""
    args = dict(data="digits8x8", batch_size=8, lr=1e-3, device="cpu", eval_every=2, seed=1,
                overrides=["hidden=8"], samples=0, progress=False)
    return train("made", steps=steps, out=out, **{**args, **kw})


def _resume_args(out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--model", "made", "--data", "digits8x8", "--steps", str(steps),
            "--out", str(out), "--resume", "--device", "cpu", "--samples", "0",
            "--no-progress", *extra]


def _one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_existing_run_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "made", "--data", "digits8x8", "--steps", "2", "--eval-every",
            "2", "--batch-size", "8", "--set", "hidden=8", "--device", "cpu", "--samples", "0",
            "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    capsys.readouterr()
    before = {name: (out / name).read_bytes() for name in ("ckpt.pt", "metrics.jsonl")}
    err = _one_line(_error(capsys, *args, "--seed", "3"))
    assert f"--out {out} already holds a run (ckpt.pt, metrics.jsonl)" in err
    assert "--resume" in err and "--overwrite" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert "give one of them" in _error(capsys, *args, "--resume", "--overwrite")

    assert cli.main([*args, "--seed", "3", "--overwrite"]) == 0
    assert read_checkpoint(out / "ckpt.pt")["train"]["seed"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    empty = tmp_path / "empty"  # an existing folder without a run is fine
    empty.mkdir()
    assert cli.main([*args[:-1], str(empty)]) == 0


@pytest.mark.parametrize(("flag", "given", "saved"), [
    ("--seed", "2", "1"), ("--lr", "0.002", "0.001"), ("--batch-size", "16", "8"),
    ("--ema", "0.9", "0.0")])
def test_resume_refuses_changed_settings(tmp_path, capsys, flag, given, saved):
    out = tmp_path / "run"
    _tiny_run(out)  # seed 1, lr 0.001, batch 8
    before = {name: (out / name).read_bytes() for name in ("ckpt.pt", "metrics.jsonl")}
    err = _one_line(_error(capsys, *_resume_args(out, 4, flag, given)))
    assert f"{flag} {given} differs from" in err
    assert f"= {saved} saved in {out / 'ckpt.pt'}" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert cli.main(_resume_args(out, 4, flag, saved)) == 0  # the saved value: fine


@pytest.mark.parametrize("steps", [2, 1])
def test_resume_with_nothing_left_to_train_is_refused(tmp_path, capsys, steps):
    out = tmp_path / "run"
    _tiny_run(out)  # at step 2
    metrics = (out / "metrics.jsonl").read_text()
    err = _one_line(_error(capsys, *_resume_args(out, steps)))
    assert f"--steps {steps}: {out / 'ckpt.pt'} is already at step 2" in err
    assert (out / "metrics.jsonl").read_text() == metrics  # no duplicate row


def test_checksum_catches_flipped_bytes(tmp_path, capsys):
    out = tmp_path / "run"
    _tiny_run(out)
    path = out / "ckpt.pt"
    good = path.read_bytes()
    assert good.startswith(CKPT_HEADER)
    state = read_checkpoint(path)["model_state"]
    weight = max((v for v in state.values() if v.is_floating_point()), key=torch.numel)
    at = good.find(weight.numpy().tobytes()) + 64  # 64 bytes inside the tensor data
    assert at > 64
    bad = bytearray(good)
    bad[at:at + 64] = bytes(b ^ 0x5A for b in bad[at:at + 64])
    path.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is corrupt"):
        read_checkpoint(path)
    err = _one_line(_error(capsys, "sample", "--ckpt", str(path), "--out",
                           str(tmp_path / "g.png"), "--device", "cpu"))
    assert f"{path} is corrupt" in err
    assert f"{path} is corrupt" in _error(capsys, *_resume_args(out, 4))
    path.write_bytes(good[:-100])  # truncated
    assert f"{path} is corrupt" in _error(capsys, *_resume_args(out, 4))


def test_old_format_checkpoint_still_loads_and_resumes(tmp_path):
    out = tmp_path / "run"
    _tiny_run(out)
    torch.save(read_checkpoint(out / "ckpt.pt"), out / "ckpt.pt")  # version 1: no checksum
    assert load_checkpoint(out / "ckpt.pt")[1]["step"] == 2
    assert _tiny_run(out, steps=4, resume=True)["step"] == 4
    assert (out / "ckpt.pt").read_bytes().startswith(CKPT_HEADER)  # rewritten as version 2
    ckpt = read_checkpoint(out / "ckpt.pt")  # written before --ema existed: no "ema" entry
    del ckpt["train"]["ema"]
    save_checkpoint(out / "ckpt.pt", ckpt)
    assert _tiny_run(out, steps=6, resume=True)["step"] == 6
    assert read_checkpoint(out / "ckpt.pt")["train"]["ema"] == 0.0


def test_orphaned_temporary_files_are_removed(tmp_path):
    out = tmp_path / "run"
    _tiny_run(out)
    orphans = [out / "ckpt.ptk2j3h4_q.tmp", out / "metrics.jsonlx1.tmp", out / "samples.pngq.tmp"]
    for orphan in orphans:  # what a kill during atomic_write leaves
        orphan.write_bytes(b"half a file")
    (out / "notes.tmp").write_text("not ours")
    _tiny_run(out, steps=4, resume=True)
    assert not [p for p in orphans if p.exists()]
    assert (out / "notes.tmp").exists()
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    _tiny_run(out, overwrite=True)
    assert not [p for p in orphans if p.exists()]


def test_corrupt_metrics_line_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    _tiny_run(out, steps=4)  # rows at steps 2 and 4
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1].replace(",", " ", 1) + "\n")
    err = _one_line(_error(capsys, *_resume_args(out, 6)))
    assert f"{path}, line 2: Expecting ',' delimiter at column" in err
    # A last line cut short (no newline: killed while appending, after the checkpoint).
    path.write_text("\n".join(lines) + "\n" + lines[1][:20])
    assert cli.main(_resume_args(out, 6)) == 0
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4, 6]


def test_checkpoint_missing_a_key_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    _tiny_run(out)
    path = out / "ckpt.pt"
    ckpt = read_checkpoint(path)
    del ckpt["optimizer_state"]
    save_checkpoint(path, ckpt)
    err = _one_line(_error(capsys, *_resume_args(out, 4)))
    assert f"{path}: the checkpoint has no 'optimizer_state' entry" in err
    del ckpt["model_state"]
    save_checkpoint(path, ckpt)
    err = _error(capsys, "sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png"))
    assert f"{path}: the checkpoint has no 'model_state' entry" in err

def test_torchrun_two_processes_gloo(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "artrt", "train", "--model", "made", "--data", "digits8x8", "--steps", "4",
         "--eval-every", "2", "--batch-size", "16", "--device", "cpu", "--out", str(out),
         "--samples", "10", "--no-progress", "--set", "hidden=32"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("checkpoint") == 1, r.stdout  # only rank 0 prints the summary
    model, ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 4 and ckpt["train"]["batch_size"] == 16
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rows] == [2, 4]
    assert (out / "samples.png").is_file()
    # The global batch is split between the ranks and DDP averages the gradients: one
    # process on the whole batch takes the same steps up to float rounding (compared through
    # the test nll: Adam's first steps are sign-like, so a parameter whose gradient is
    # rounding noise may move either way).
    train("made", "digits8x8", steps=4, eval_every=2, batch_size=16, device="cpu",
          out=tmp_path / "single", samples=0, progress=False, overrides=["hidden=32"])
    single = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    for a, b in zip(rows, single, strict=True):
        assert math.isclose(json.loads(a)["test_nll"], json.loads(b)["test_nll"],
                            rel_tol=1e-3), (a, b)
