"""Sample grids as PNG files, with no imaging library: a grid of samples laid out as one
uint8 image, and a minimal PNG writer (zlib + CRC32 from the standard library, 8-bit grey or
RGB, no filtering) that writes atomically.

Why our own writer: Pillow comes only with the ``[data]`` extra (through matplotlib and
scikit-image), and a grid of a few kilobytes needs nothing it offers.

Layout of a grid of ``rows x cols`` cells, ``pad`` pixels of mid-grey between and around::

    +---+---+---+      a cell is one sample: (C, H, W) images as RGB (C = 3) or as their
    | 0 | 1 | 2 |      channels stacked top to bottom in grey (C = 1: one grey image);
    +---+---+---+      (C, T) sequences as a strip, T wide, ``STRIP`` rows per channel,
    | 3 | 4 | 5 |      grey = level. Levels map linearly to 0..255; every pixel is
    +---+---+---+      repeated ``scale`` times in both directions.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

import torch

PAD_GREY = 128
STRIP = 8  # rows per channel of a (C, T) strip: wide enough to see at scale 1
MIN_CELL = 32  # default scale: the smallest integer making a cell at least this many pixels


def _cell(x: torch.Tensor, levels: int) -> torch.Tensor:
    """One sample x (C, H, W) or (C, T), integer levels -> uint8 (h, w, 1 or 3)."""
    grey = (x.double() * (255.0 / (levels - 1))).round().clamp(0, 255).to(torch.uint8)
    if x.dim() == 2:  # (C, T): one strip per channel, stacked
        return grey.repeat_interleave(STRIP, 0).unsqueeze(-1)  # (C * STRIP, T, 1)
    if x.shape[0] == 3:
        return grey.permute(1, 2, 0)  # (H, W, 3)
    return grey.reshape(-1, x.shape[-1]).unsqueeze(-1)  # (C * H, W, 1)


def default_scale(shape: tuple[int, ...]) -> int:
    """Pixel repeat for samples of ``shape``: 1 for sequences, else enough for
    :data:`MIN_CELL` pixels across (an 8x8 digit is drawn 4x, a 28x28 one 2x)."""
    if len(shape) == 2:
        return 1
    return max(1, -(-MIN_CELL // max(shape[1:])))


def grid_image(x: torch.Tensor, levels: int, cols: int, scale: int | None = None,
               pad: int = 1) -> torch.Tensor:
    """Lay out samples in a grid, row by row.

    x: (N, C, H, W) or (N, C, T) integer levels in [0, levels). cols: cells per row (rows =
    ceil(N / cols); missing cells stay grey). scale: pixel repeat (default
    :func:`default_scale`). Returns uint8 (height, width, 1) for grey, (height, width, 3) for
    RGB.
    """
    if x.dim() not in (3, 4) or x.shape[0] < 1:
        raise ValueError(f"grid_image: x must be (N, C, H, W) or (N, C, T) with N >= 1, got "
                         f"{tuple(x.shape)}")
    scale = default_scale(tuple(x.shape[1:])) if scale is None else scale
    cells = [_cell(s, levels) for s in x.cpu()]
    h, w, c = cells[0].shape
    h, w = h * scale, w * scale
    rows = -(-len(cells) // cols)
    canvas = torch.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), PAD_GREY,
                        dtype=torch.uint8)
    for i, cell in enumerate(cells):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        big = cell.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        canvas[top:top + h, left:left + w] = big
    return canvas


def png_bytes(image: torch.Tensor) -> bytes:
    """uint8 image (height, width) or (height, width, 1 | 3) -> the bytes of a PNG file
    (8-bit grey or RGB, filter 0 on every row)."""
    if image.dim() == 2:
        image = image.unsqueeze(-1)
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"png_bytes: want uint8 (H, W), (H, W, 1) or (H, W, 3), got "
                         f"{image.dtype} {tuple(image.shape)}")
    height, width, channels = image.shape
    rows = torch.cat([torch.zeros(height, 1, dtype=torch.uint8),
                      image.contiguous().reshape(height, width * channels)], 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    color_type = 0 if channels == 1 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    pixels = zlib.compress(bytes(rows.flatten().tolist()), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file in the folder of ``path``, fsync it, then
    ``os.replace`` it onto ``path``: readers see the old file or the new one, never a part;
    on an error the temporary file is removed and ``path`` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path), suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_png(path: str | os.PathLike, image: torch.Tensor) -> None:
    """Write a uint8 image (see :func:`png_bytes`) to ``path`` atomically."""
    data = png_bytes(image)
    atomic_write(path, lambda f: f.write(data))


__all__ = ["atomic_write", "default_scale", "grid_image", "png_bytes", "write_png"]
