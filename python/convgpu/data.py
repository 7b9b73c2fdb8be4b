"""Data sets for the training loop.

- `digits()`: the 8x8 handwritten digits scikit-learn ships (1,797 real images, no
  download), scaled to [0, 1], optionally upsampled by an integer factor (nearest or
  bilinear).
- `read_idx(path)` / `mnist(dir)`: the IDX format of MNIST (train-images-idx3-ubyte, ...,
  optionally gzipped) for files the user already has.
- `split`, `batches`: a seeded train/test split and seeded shuffled mini-batches.
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import Iterator, Tuple

import numpy as np

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def upsample(images: np.ndarray, factor: int, mode: str = "bilinear") -> np.ndarray:
    """(N, C, H, W) -> (N, C, H*factor, W*factor)."""
    if factor == 1:
        return images
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"upsample: factor must be a positive int, got {factor!r}")
    if mode == "nearest":
        return images.repeat(factor, axis=2).repeat(factor, axis=3)
    if mode != "bilinear":
        raise ValueError(f"upsample: mode must be 'nearest' or 'bilinear', got {mode!r}")
    N, C, H, W = images.shape

    def axis(n):
        src = (np.arange(n * factor) + 0.5) / factor - 0.5
        src = np.clip(src, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, (src - lo).astype(images.dtype)

    hl, hh, hf = axis(H)
    wl, wh, wf = axis(W)
    rows = images[:, :, hl] * (1 - hf)[:, None] + images[:, :, hh] * hf[:, None]
    return rows[:, :, :, wl] * (1 - wf) + rows[:, :, :, wh] * wf


def digits(upsample_factor: int = 1, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits: images (1797, 1, 8*f, 8*f) in [0, 1], labels int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:                       # the data extra is not installed
        raise ImportError("convgpu.data.digits needs scikit-learn (pip install "
                          "'convgpu[data]')") from e
    d = load_digits()
    x = (d.images / 16.0).astype(dtype)[:, None]
    return upsample(x, upsample_factor).astype(dtype), d.target.astype(np.int64)


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (optionally .gz): magic 0x0000 <type> <ndim>, big-endian dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) != 4 or head[0] != 0 or head[1] != 0:
            raise ValueError(f"read_idx: {path} is not an IDX file (magic {head!r})")
        kind, ndim = head[2], head[3]
        if kind not in IDX_TYPES:
            raise ValueError(f"read_idx: {path} has unknown element type 0x{kind:02x}")
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        dt = np.dtype(IDX_TYPES[kind])
        n = int(np.prod(dims)) if dims else 1
        buf = f.read(n * dt.itemsize)
        if len(buf) != n * dt.itemsize:
            raise ValueError(f"read_idx: {path} is truncated: {len(buf)} of {n * dt.itemsize} "
                             "data bytes")
        return np.frombuffer(buf, dtype=dt).reshape(dims).astype(dt.newbyteorder("="))


def _find(directory, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"mnist: no {stem}[.gz] in {directory}")


def mnist(directory: str, dtype=np.float32):
    """((x_train, y_train), (x_test, y_test)) from the four MNIST IDX files in `directory`;
    images (N, 1, 28, 28) in [0, 1], labels int64."""
    out = []
    for prefix in ("train", "t10k"):
        x = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"mnist: {prefix} images {x.shape} and labels {y.shape} do not match")
        out.append(((x.astype(dtype) / 255.0)[:, None], y.astype(np.int64)))
    return tuple(out)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write an IDX file (used by the tests to make small MNIST-like files)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C}
    a = np.asarray(array)
    if a.dtype == np.int32 or a.dtype == np.int64:
        a = a.astype(">i4")
    code = codes[a.dtype]
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(bytes([0, 0, code, a.ndim]))
        f.write(struct.pack(f">{a.ndim}I", *a.shape))
        f.write(a.tobytes())


def split(x, y, test_fraction=0.2, seed=0):
    """Seeded shuffle, then the last test_fraction is the test set."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"split: test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    tr, te = order[:-n_test], order[-n_test:]
    return (x[tr], y[tr]), (x[te], y[te])


def batches(x, y, batch_size, *, shuffle=True, rng=None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    if batch_size < 1:
        raise ValueError(f"batches: batch_size must be positive, got {batch_size}")
    idx = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for i in range(0, len(x), batch_size):
        j = idx[i:i + batch_size]
        yield x[j], y[j]


def load_image(path: str, size: int, invert: bool = False) -> np.ndarray:
    """One grey image (size, size) in [0, 1] with bright ink, for predicting: a .npy of a
    2-D array (or (1, H, W)), floats in [0, 1] or uint8 0-255; or a .png read by
    matplotlib (colour averaged to grey, alpha dropped). An image k times larger in both
    directions is averaged over k x k blocks; invert=True takes dark ink on light paper."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        a = np.load(path, allow_pickle=False)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.dtype == np.uint8:
            a = a / 255.0
        elif a.dtype.kind != "f":
            raise ValueError(f"dtype {a.dtype}: give floats in [0, 1] or uint8")
    elif ext == ".png":
        try:
            from matplotlib.image import imread
        except ImportError:
            raise ValueError("reading .png needs matplotlib (pip install 'convgpu[plot]')") \
                from None
        a = imread(path)
        if a.dtype == np.uint8:
            a = a / 255.0
        if a.ndim == 3:
            a = a[..., :3].mean(axis=2)
    else:
        raise ValueError(f"unknown image format {ext or '(no extension)'!r}: give .npy or .png")
    if a.ndim != 2:
        raise ValueError(f"shape {a.shape}: an image is a 2-D array")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise ValueError(f"values in [{a.min():g}, {a.max():g}]: give floats in [0, 1]")
    h, w = a.shape
    if h != w or h % size:
        raise ValueError(f"size {h}x{w}: the network takes {size}x{size} images (or an integer "
                         "multiple, averaged down)")
    k = h // size
    a = a.reshape(size, k, size, k).mean(axis=(1, 3))
    return 1.0 - a if invert else a
