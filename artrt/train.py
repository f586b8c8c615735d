"""Training and sampling for the models of :mod:`artrt.models` on the bundled data of
:mod:`artrt.data` (the ``artrt train`` and ``artrt sample`` commands).

- :func:`train`: Adam on the mean nll (nats per example), a tqdm bar with the loss, the test
  nll in nats and bits/dim (= nll / (dims * ln 2)) every ``eval_every`` steps and at the end
  (``metrics.jsonl``), a checkpoint ``ckpt.pt`` written atomically at each evaluation, and
  ``samples.png`` at the end. With ``ema`` > 0, an exponential moving average of the weights
  (Polyak averaging, as PixelCNN++ trains) is what is evaluated, sampled and saved as the
  model; the optimizer's own weights are kept in the checkpoint for a resume. The ops
  choose their implementation themselves (the cpu backend on a CPU, the fused kernels on a
  GPU). A folder that already holds a run is refused unless asked to
  ``overwrite`` it or ``resume`` it; every argument is checked before any work starts.
- Exact resume: the batch of step s is a function of (seed, s) only (epoch e is a
  ``randperm`` seeded by (seed, e)), MADE's mask set of step s too, and the checkpoint holds
  the model, the optimizer and the RNG states, so N steps straight and N/2 + resume N/2
  give the same parameters bit for bit (on CPU). A resume that would break this (another
  seed, batch size or lr than the saved ones) is refused, and so is one with nothing left to
  train (``steps`` at or below the saved step).
- Checkpoint file: one header line ``artrt-checkpoint/2 sha256 <hex>`` and the
  ``torch.save`` bytes of the checkpoint dict (the payload); the payload's sha256 is checked
  at every load, so a flipped byte is an error naming the file, never a model from garbage.
  A checkpoint of the older format (the bare ``torch.save`` zip file, no checksum) still
  loads.
- Several processes: launched by ``torchrun`` (env RANK / WORLD_SIZE), the process group is
  gloo on CPU and nccl on CUDA, the loss module is wrapped in DistributedDataParallel, every
  step's global batch (``batch_size``) is split between the ranks, the test nll is summed
  over ranks, and only rank 0 prints and writes files.
- :func:`load_checkpoint` and :func:`sample_grid`: the model back from a checkpoint (clear
  :class:`CheckpointError` when the file is not an artrt checkpoint, names an unknown model,
  or its state does not fit) and a PNG grid of its samples (:mod:`artrt.grid`), one row per
  class for a class-conditional model.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import random
import tempfile
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from artrt.grid import atomic_write, grid_image, write_png
from artrt.models import MODELS

CKPT_FORMAT = "artrt-checkpoint"
CKPT_VERSION = 1  # the layout of the checkpoint dict
CKPT_HEADER = b"artrt-checkpoint/2 sha256 "  # + 64 hex digits + b"\n", then the payload
CKPT_LEGACY_MAGIC = b"PK\x03\x04"  # version 1 files: the bare torch.save zip, no checksum
CKPT_MODEL_KEYS = ("config", "model_state")  # needed to build the model
CKPT_RESUME_KEYS = ("data", "optimizer_state", "step", "rng", "train")  # and to train on
TRAIN_SETTINGS = (("seed", "--seed"), ("batch_size", "--batch-size"), ("lr", "--lr"),
                  ("ema", "--ema"))
# Settings added later: a checkpoint without one was trained with this value.
TRAIN_SETTING_DEFAULTS = {"ema": 0.0}
CKPT_NAME = "ckpt.pt"
METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "samples.png"
DATA_FIELDS = ("shape", "levels")  # set by the data set, never by --set
RUN_FILES = (CKPT_NAME, METRICS_NAME, SAMPLES_NAME)  # a folder holding one of them is a run


class CheckpointError(ValueError):
    """A file that is not an artrt checkpoint, or one that does not fit what is asked."""


# --------------------------------------------------------------------------- config overrides


def _parse_value(text: str, tp: Any, key: str) -> Any:
    """``text`` as a value of type ``tp`` (int, float, bool, str, tuple[int, ...], X | None);
    ValueError naming ``key`` otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() == "none":
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse_value(text, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        items = [t.strip() for t in text.strip().strip("()[]").split(",") if t.strip()]
        if args and args[-1] is Ellipsis:
            return tuple(_parse_value(t, args[0], key) for t in items)
        if len(items) != len(args):
            raise ValueError(f"--set {key}: want {len(args)} comma-separated values, got {text!r}")
        return tuple(_parse_value(t, a, key) for t, a in zip(items, args, strict=True))
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: want a bool (true/false), got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"--set {key}: want {tp.__name__}, got {text!r}") from None
    if tp is str:
        return text
    raise ValueError(f"--set {key}: cannot parse a value of type {tp}")


def parse_overrides(config_cls: type, pairs: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> {field: value} for the config dataclass ``config_cls``, each
    value parsed to the field's annotated type. ValueError for a malformed pair, an unknown
    key, a data field (shape, levels), or a value of the wrong type."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        if key not in names:
            raise ValueError(f"--set {key}: {config_cls.__name__} has no field {key!r}; its "
                             f"fields: {', '.join(n for n in names if n not in DATA_FIELDS)}")
        if key in DATA_FIELDS:
            raise ValueError(f"--set {key}: {key} comes from the data set and cannot be set")
        out[key] = _parse_value(text, hints[key], key)
    return out


def build_config(model_name: str, dataset: Any, overrides: Sequence[str] = ()) -> Any:
    """The config of ``model_name`` for ``dataset`` (shape, levels; num_classes = the data's
    unless ``num_classes=0`` is set) with the ``--set`` overrides applied."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    config_cls = MODELS[model_name][1]
    values = parse_overrides(config_cls, overrides)
    num_classes = values.get("num_classes", dataset.num_classes)
    if num_classes not in (0, dataset.num_classes):
        raise ValueError(f"--set num_classes: {dataset.name} has {dataset.num_classes} classes; "
                         f"num_classes must be 0 (unconditional) or {dataset.num_classes}")
    values.update(shape=tuple(dataset.shape), levels=dataset.levels, num_classes=num_classes)
    return config_cls(**values)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` as a checkpoint file: the header line ``artrt-checkpoint/2 sha256
    <hex>`` then the ``torch.save`` bytes it hashes, into a temporary file in the same
    folder, fsync, ``os.replace`` (:func:`artrt.grid.atomic_write`): a crash or an error
    midway leaves the previous checkpoint as it was (and at worst a ``ckpt.pt*.tmp`` file,
    which :func:`train` removes when it starts)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    header = CKPT_HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(f: typing.BinaryIO) -> None:
        f.write(header)
        f.write(payload)

    atomic_write(path, write)


def _load_verified(path: Path) -> Any:
    """The object saved at ``path`` by :func:`save_checkpoint`, after checking the sha256 of
    its payload (or by the version 1 format: a bare ``torch.save`` file, no checksum).
    CheckpointError naming the file when it is neither or its checksum does not match."""
    data = path.read_bytes()
    if data.startswith(CKPT_HEADER):
        end = data.find(b"\n", len(CKPT_HEADER))
        want = data[len(CKPT_HEADER):end].decode("ascii", "replace") if end > 0 else ""
        payload = memoryview(data)[end + 1:] if end > 0 else memoryview(b"")
        got = hashlib.sha256(payload).hexdigest()
        if got != want:
            raise CheckpointError(f"{path} is corrupt: the sha256 of its payload is {got}, its "
                                  f"header says {want[:64]!r} (a damaged or truncated file)")
        source = io.BytesIO(payload)
    elif data.startswith(CKPT_LEGACY_MAGIC):
        source = io.BytesIO(data)  # version 1: no checksum to check
    else:
        raise CheckpointError(f"{path} is not an artrt checkpoint (neither an "
                              f"'{CKPT_HEADER.decode().split()[0]}' header nor a torch.save "
                              f"file)")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not an artrt checkpoint (torch.load failed: "
                              f"{type(err).__name__})") from err


def _require(ckpt: dict[str, Any], path: str | os.PathLike, keys: Sequence[str],
             what: str = "checkpoint") -> None:
    """CheckpointError naming ``path`` and the first of ``keys`` that ``ckpt`` lacks."""
    for key in keys:
        if key not in ckpt:
            raise CheckpointError(f"{path}: the {what} has no {key!r} entry (written by "
                                  f"another program, or damaged)")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path``, its checksum verified, checked to be an artrt
    checkpoint naming a known model with a config and a model state (CheckpointError
    otherwise, naming the file; FileNotFoundError when there is no file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = _load_verified(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an artrt checkpoint (no '{CKPT_FORMAT}' "
                              f"format tag)")
    if ckpt.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this artrt "
                              f"reads version {CKPT_VERSION}")
    if ckpt.get("model") not in MODELS:
        raise CheckpointError(f"{path} names unknown model {ckpt.get('model')!r}; known: "
                              f"{sorted(MODELS)}")
    _require(ckpt, path, CKPT_MODEL_KEYS)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint"
                          ) -> nn.Module:
    """Build the checkpoint's model from its config and load its weights (CPU).
    CheckpointError when the config or the state does not fit the model."""
    model_cls, config_cls = MODELS[ckpt["model"]]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    config = dict(ckpt.get("config") or {})
    if set(config) - fields:
        raise CheckpointError(f"{path}: config keys {sorted(set(config) - fields)} are not "
                              f"fields of {config_cls.__name__}")
    try:
        model = model_cls(config_cls(**config))
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: the saved state does not fit model "
                              f"{ckpt['model']!r}: {err}") from err
    return model


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(model on ``device`` in eval mode, checkpoint dict) from an ``artrt train``
    checkpoint."""
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    return model, ckpt


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- data order


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """(batch_size,) int64 indices of the examples of step ``step``: the stream of epoch
    permutations (epoch e: ``randperm(n)`` from a generator seeded by (seed, e)) cut into
    consecutive batches; a function of (n, batch_size, seed, step) only."""
    start = step * batch_size
    parts, have = [], 0
    epoch, offset = divmod(start, n)
    while have < batch_size:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)[offset:offset + batch_size - have]
        parts.append(perm)
        have += len(perm)
        epoch, offset = epoch + 1, 0
    return torch.cat(parts)


def _step_hook(model: nn.Module, seed: int, step: int) -> None:
    """Per-step model randomness from (seed, step): MADE draws its mask set from the pool."""
    if getattr(model.config, "num_masks", 1) > 1 and hasattr(model, "resample_masks"):
        model.resample_masks(torch.Generator().manual_seed(seed * 1_000_003 + step + 7))


class _MeanNLL(nn.Module):
    """The training loss as a module, so DistributedDataParallel sees the forward: the mean
    nll in nats of x (B, *shape) levels, cond (B,) labels or None."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.model.nll(x, cond).mean()


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, device: torch.device, batch_size: int = 256,
             rank: int = 0, world: int = 1) -> float:
    """Mean test nll in nats per example (MADE with a pool: the ensemble over the pool),
    computed on this rank's share of the examples and summed over the ranks."""
    was_training = model.training
    model.eval()
    idx = torch.arange(rank, len(dataset), world)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum nll, count)
    num_masks = getattr(model.config, "num_masks", 1)
    conditional = model.config.num_classes > 0
    for chunk in idx.split(batch_size):
        x = dataset.x[chunk].long().to(device)
        cond = dataset.y[chunk].to(device) if conditional else None
        nll = model.nll(x, cond, num_masks=num_masks) if num_masks > 1 else model.nll(x, cond)
        total += torch.stack([nll.double().sum(), torch.tensor(float(len(chunk)),
                                                               device=device)])
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


# --------------------------------------------------------------------------- sampling


def _check_n(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")


def sample_grid(model: nn.Module, n: int, path: str | os.PathLike, *, seed: int = 0,
                progress: bool = False) -> torch.Tensor:
    """Draw samples from ``model`` and write them as a PNG grid to ``path``.

    Unconditional: n samples in a near-square grid ((C, T) sequences: one strip, T pixels
    wide, per row; see :mod:`artrt.grid`). Class-conditional (K classes): ceil(n /
    K) samples of each class, one row per class (row k: label k). Returns the samples (N,
    *shape) int64 on the CPU.
    """
    _check_n(n)
    device = next(model.parameters()).device
    classes = model.config.num_classes
    if classes:
        cols = -(-n // classes)
        cond = torch.arange(classes, device=device).repeat_interleave(cols)
        n = len(cond)
    else:
        cond = None  # sequences: one strip per row; images: a near-square grid
        cols = 1 if len(model.config.shape) == 2 else max(1, math.ceil(math.sqrt(n)))
    gen = torch.Generator(device=device).manual_seed(seed)
    x = model.sample(n, cond, generator=gen, progress=progress).cpu()
    write_png(path, grid_image(x, model.config.levels, cols))
    return x


def sample(ckpt: str | os.PathLike, n: int, out: str | os.PathLike, *, seed: int = 0,
           device: str | None = None, progress: bool = False) -> torch.Tensor:
    """``artrt sample``: the model of checkpoint ``ckpt`` draws ``n`` samples (spread over
    the classes, one row each, when class-conditional) into the PNG grid ``out``. ``n``,
    ``device`` and ``out`` (a file, not a folder) are checked before the model is loaded."""
    _check_n(n)
    device = resolve_device(device)
    if Path(out).is_dir():
        raise ValueError(f"--out {out}: is a folder; give the path of the PNG file to write")
    model, _ = load_checkpoint(ckpt, device)
    return sample_grid(model, n, out, seed=seed, progress=progress)


# --------------------------------------------------------------------------- training


def resolve_device(device: str | None) -> str:
    """``device`` checked to be ``cpu``, ``cuda`` or ``cuda:N`` of a present GPU (None: cuda
    when available, else cpu); ValueError naming ``--device`` otherwise."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: want cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device!r}: no CUDA device is available "
                             f"(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device!r}: there are {torch.cuda.device_count()} "
                             f"CUDA devices")
    return device


def _check_writable(out: Path) -> None:
    """Create the folder ``out`` and write and remove a file in it; ValueError naming
    ``--out`` when that fails (not a folder, read-only, no permission)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write in this folder "
                         f"({err.strerror or type(err).__name__})") from err


def _check_resume(ckpt: dict[str, Any], path: Path, model: str, data: str, steps: int,
                  given: dict[str, Any], overrides: Sequence[str]) -> None:
    """Refuse a resume that cannot continue the saved run exactly: another model or data
    set, a setting in ``given`` (seed, batch_size, lr; None = not given) or a ``--set``
    config field other than the saved one, or nothing left to train (``steps`` <= the
    saved step). CheckpointError for a checkpoint lacking what a resume needs."""
    _require(ckpt, path, CKPT_RESUME_KEYS)
    if not isinstance(ckpt["train"], dict):
        raise CheckpointError(f"{path}: the checkpoint's 'train' entry is not a dict")
    _require(ckpt["train"], path, [name for name, _ in TRAIN_SETTINGS
                                   if name not in TRAIN_SETTING_DEFAULTS],
             "checkpoint's 'train'")
    if ckpt["model"] != model:
        raise CheckpointError(f"{path} holds a {ckpt['model']!r} model, not {model!r}")
    if ckpt["data"] != data:
        raise CheckpointError(f"{path} was trained on {ckpt['data']!r}, not {data!r}")
    for name, flag in TRAIN_SETTINGS:
        saved = ckpt["train"].get(name, TRAIN_SETTING_DEFAULTS.get(name))
        if given[name] is not None and given[name] != saved:
            raise ValueError(f"{flag} {given[name]} differs from {name} = {saved} saved in "
                             f"{path}: a resumed run keeps its settings (exact resume); omit "
                             f"{flag}, or train into a new --out")
    for key, value in parse_overrides(MODELS[model][1], overrides).items():
        if ckpt["config"].get(key) != value:
            raise CheckpointError(f"--set {key}={value!r} differs from the config saved in "
                                  f"{path} ({key} = {ckpt['config'].get(key)!r}): a resumed "
                                  f"run keeps its model")
    if steps <= ckpt["step"]:
        raise ValueError(f"--steps {steps}: {path} is already at step {ckpt['step']}; "
                         f"nothing to train (give --steps above {ckpt['step']})")


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)))


def train(model: str, data: str, *, steps: int = 1000, batch_size: int | None = None,
          lr: float | None = None, device: str | None = None, out: str | os.PathLike = "run",
          eval_every: int = 200, seed: int | None = None, resume: bool = False,
          overrides: Sequence[str] = (), samples: int = 64, progress: bool = True,
          data_root: str | os.PathLike | None = None, overwrite: bool = False,
          ema: float | None = None) -> dict[str, Any]:
    """Train model ``model`` (a key of :data:`artrt.models.MODELS`) on data set ``data`` for
    ``steps`` optimizer steps in total, writing into the folder ``out``:

    - ``ckpt.pt``: model name, config (a dict), data name, model and optimizer state, step,
      RNG states, and the training settings (seed, batch_size, lr, ema); written atomically
      after every evaluation. With ``ema``, ``model_state`` holds the averaged weights (what
      ``artrt sample`` and :func:`load_checkpoint` use) and ``optimizer_model_state`` the
      optimizer's own.
    - ``metrics.jsonl``: one JSON line per evaluation: step, train loss (mean nats since the
      last line; rank 0's share of the batch under torchrun), test nll (nats per example)
      and bits/dim.
    - ``samples.png``: a grid of ``samples`` samples at the end (0: none).

    batch_size, lr, seed, ema: default 64, 1e-3, 0, 0 (on resume: the checkpoint's; a value
    other than the saved one is refused). ema: the decay of an exponential moving average of
    the weights (e.g. 0.995; 0: none), updated after every optimizer step with the decay
    ``min(ema, (1 + s) / (10 + s))`` at step s (short runs are not dominated by the
    initial weights); the test nll, the samples and the saved model are the average's.
    overrides: ``key=value`` fields of the model's config.
    resume: continue from ``out/ckpt.pt`` up to ``steps`` (> the saved step). overwrite:
    start afresh in a folder that already holds a run (its ckpt.pt, metrics.jsonl and
    samples.png are removed); without it (or resume) such a folder is refused. progress: a
    tqdm bar on stderr when it is a terminal (tqdm's ``disable=None``: none in a log file).
    Under torchrun, ``batch_size`` is the global batch, split between the ranks.

    Every argument, the device, the checkpoint (on resume) and the output folder are checked
    before any data is loaded: ValueError (CheckpointError for a checkpoint) otherwise.
    Temporary files left in ``out`` by a run killed while writing are removed at the start.
    Returns {"step", "test_nll", "test_bpd", "ckpt"}.
    """
    from artrt import data as artrt_data  # needs the [data] extra

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    if data not in artrt_data.DATASETS:
        raise ValueError(f"unknown data set {data!r}; choose one of "
                         f"{sorted(artrt_data.DATASETS)}")
    if steps < 0 or eval_every < 1:
        raise ValueError(f"steps must be >= 0 and eval_every >= 1, got {steps}, {eval_every}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"--samples must be an int >= 0 (0: no samples.png), got {samples!r}")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float))
                            or not 0.0 <= ema < 1.0):
        raise ValueError(f"--ema must be a decay in [0, 1) (0: no averaging), got {ema!r}")
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: "
                         "give one of them")
    device = resolve_device(device)
    out = Path(out)
    ckpt_path = out / CKPT_NAME
    if not resume and not overwrite and out.is_dir():
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            raise ValueError(f"--out {out} already holds a run ({', '.join(found)}): give "
                             f"--resume to continue it, --overwrite to replace it, or another "
                             f"--out")
    ckpt = None
    kept_metrics: list[str] = []
    if resume:
        ckpt = read_checkpoint(ckpt_path)
        _check_resume(ckpt, ckpt_path, model, data, steps,
                      {"seed": seed, "batch_size": batch_size, "lr": lr, "ema": ema},
                      overrides)
        kept_metrics = _metrics_upto(out / METRICS_NAME, ckpt["step"])
        saved = ckpt["train"]
        seed = saved["seed"] if seed is None else seed
        batch_size = saved["batch_size"] if batch_size is None else batch_size
        lr = saved["lr"] if lr is None else lr
        ema = saved.get("ema", TRAIN_SETTING_DEFAULTS["ema"]) if ema is None else ema
    seed = 0 if seed is None else seed
    ema = 0.0 if ema is None else float(ema)
    batch_size = 64 if batch_size is None else batch_size
    lr = 1e-3 if lr is None else lr

    rank, world, local_rank = _distributed()
    if batch_size < 1 or batch_size % world:
        raise ValueError(f"batch_size must be a positive multiple of the {world} processes, "
                         f"got {batch_size}")
    if rank == 0:
        _check_writable(out)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dev = torch.device(device)
    started_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        started_group = True
    try:
        train_set = artrt_data.load(data, "train", root=data_root)
        test_set = artrt_data.load(data, "test", root=data_root)
        torch.manual_seed(seed)
        if ckpt is not None:
            net = model_from_checkpoint(ckpt, ckpt_path)
        else:
            net = MODELS[model][0](build_config(model, train_set, overrides))
        net.to(dev).train()
        # the moving average (a copy of the model, never trained) and the model the test
        # nll, the samples and the checkpoint's model_state are taken from
        avg = copy.deepcopy(net).requires_grad_(False) if ema else None
        if avg is not None and ckpt is not None:
            if "optimizer_model_state" not in ckpt:
                raise CheckpointError(f"{ckpt_path}: trained with --ema but holds no "
                                      f"'optimizer_model_state' entry (damaged)")
            net.load_state_dict(ckpt["optimizer_model_state"])
        final = net if avg is None else avg
        loss_fn: nn.Module = _MeanNLL(net)
        if world > 1:
            loss_fn = nn.parallel.DistributedDataParallel(
                loss_fn, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        step = 0
        if ckpt is not None:
            try:
                opt.load_state_dict(ckpt["optimizer_state"])
                _set_rng_state(ckpt["rng"])
            except (RuntimeError, ValueError, TypeError, KeyError) as err:
                raise CheckpointError(f"{ckpt_path}: the saved optimizer or RNG state does "
                                      f"not fit: {type(err).__name__}: {err}") from err
            for group in opt.param_groups:
                group["lr"] = lr
            step = ckpt["step"]
        dims = math.prod(train_set.shape)
        conditional = net.config.num_classes > 0
        writer = rank == 0
        if writer:
            for name in RUN_FILES:  # a kill during atomic_write leaves its temporary file
                for tmp in out.glob(f"{glob.escape(name)}*.tmp"):
                    tmp.unlink(missing_ok=True)
            if overwrite:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
            if ckpt is not None:  # drop the lines after the checkpoint's step (a run that
                # stopped between its last metrics line and its checkpoint)
                text = "".join(line + "\n" for line in kept_metrics).encode()
                atomic_write(out / METRICS_NAME, lambda f: f.write(text))

        def checkpoint() -> None:
            save_checkpoint(ckpt_path, {
                "format": CKPT_FORMAT, "version": CKPT_VERSION, "model": model,
                "config": dataclasses.asdict(net.config), "data": data,
                "model_state": final.state_dict(), "optimizer_state": opt.state_dict(),
                "step": step, "rng": _rng_state(),
                "train": {"seed": seed, "batch_size": batch_size, "lr": lr, "ema": ema},
                **({} if avg is None else {"optimizer_model_state": net.state_dict()}),
            })

        def log_eval(train_loss: float | None) -> dict[str, Any]:
            nll = evaluate(final, test_set, dev, rank=rank, world=world)
            row = {"step": step, "train_loss": train_loss, "test_nll": nll,
                   "test_bpd": nll / (dims * math.log(2)), "time": time.time()}
            if writer:
                with open(out / METRICS_NAME, "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.write(f"step {step}: test nll {nll:.3f} nats, {row['test_bpd']:.4f} bits/dim")
                checkpoint()
            return row

        # disable=None: tqdm draws only on a terminal, no carriage returns into a log file
        bar = tqdm(total=steps, initial=step, desc=f"{model} on {data}",
                   disable=None if progress and writer else True)
        shard = batch_size // world
        losses: list[float] = []
        row: dict[str, Any] | None = None
        while step < steps:
            idx = batch_indices(len(train_set), batch_size, seed, step)
            idx = idx[rank * shard:(rank + 1) * shard]
            x = train_set.x[idx].long().to(dev)
            cond = train_set.y[idx].to(dev) if conditional else None
            _step_hook(net, seed, step)
            loss = loss_fn(x, cond)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if avg is not None:
                _update_average(avg, net, min(ema, (1 + step) / (10 + step)))
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}",
                            bpd=f"{losses[-1] / (dims * math.log(2)):.3f}")
            if step % eval_every == 0 or step == steps:
                row = log_eval(sum(losses) / len(losses))
                losses = []
        bar.close()
        if row is None:  # a fresh run with steps=0: evaluate and checkpoint the init
            row = log_eval(None)
        if writer and samples:
            sample_grid(final, samples, out / SAMPLES_NAME, seed=seed)
        if world > 1:
            dist.barrier()  # tear the group down together: gloo aborts a rank left behind
        return {"step": step, "test_nll": row["test_nll"], "test_bpd": row["test_bpd"],
                "ckpt": str(ckpt_path)}
    finally:
        if started_group:
            dist.destroy_process_group()


@torch.no_grad()
def _update_average(avg: nn.Module, net: nn.Module, decay: float) -> None:
    """avg <- decay avg + (1 - decay) net, parameter by parameter; buffers (masks, ...)
    copied from net."""
    params = [p for p in avg.parameters() if p.is_floating_point()]
    torch._foreach_lerp_(params, [p for p in net.parameters() if p.is_floating_point()],
                         1.0 - decay)
    for b_avg, b in zip(avg.buffers(), net.buffers(), strict=True):
        b_avg.copy_(b)


def _metrics_upto(path: Path, step: int) -> list[str]:
    """The lines of the metrics file ``path`` with a step <= ``step`` ([] when there is no
    file). A last line cut short (no newline: the run was killed while appending it, after
    its last checkpoint) is dropped; any other line that is not a JSON object with an int
    "step" is a ValueError naming the file and the line."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    keep = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError('not a JSON object with an int "step"')
        except ValueError as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # cut short by a kill mid-append
            why = (f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError)
                   else str(err))
            raise ValueError(f"{path}, line {number}: {why}") from err
        if row["step"] <= step:
            keep.append(line)
    return keep


__all__ = ["CheckpointError", "batch_indices", "build_config", "evaluate", "load_checkpoint",
           "parse_overrides", "read_checkpoint", "resolve_device", "sample", "sample_grid",
           "save_checkpoint", "train"]
