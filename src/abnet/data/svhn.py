"""SVHN (cropped digits) in its official MATLAB format.

    ROOT/train_32x32.mat  ROOT/test_32x32.mat  [ROOT/extra_32x32.mat]

Read with ``scipy.io.loadmat`` (as torchvision does) but without torchvision's checksum test, so a
copy of the files loads. Label 10 stands for the digit 0, as in the original files. scipy reserves
the bytes an element's tag claims before reading them, so the tags are walked first (:func:`check_sizes`):
a few damaged bits there would otherwise make it ask for gigabytes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..errors import DataError
from .base import ImageSet

CLASSES = [str(d) for d in range(10)]
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
_MATRIX, _COMPRESSED = 14, 15  # the MAT 5 element types that hold others
_CHUNK = 1 << 24


class _Plain:
    """The content of an uncompressed element, read in place: data skipped by seeking."""

    def __init__(self, f: BinaryIO):
        self.f = f

    def read(self, n: int) -> bytes:
        return self.f.read(n)

    def skip(self, n: int) -> bool:
        self.f.seek(n, 1)  # within the element, itself checked against the file's length
        return True


class _Inflated:
    """The content of a compressed element, inflated a chunk at a time: skipped data is dropped, never held."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.left, self.z, self.buffer = f, size, zlib.decompressobj(), b""

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n and not self.z.eof:
            data = self.z.unconsumed_tail or self.f.read(min(self.left, _CHUNK))
            if not data:
                break
            if not self.z.unconsumed_tail:
                self.left -= len(data)
            self.buffer += self.z.decompress(data, n - len(self.buffer))
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def skip(self, n: int) -> bool:
        while n > 0 and (got := len(self.read(min(n, _CHUNK)))):
            n -= got
        return n <= 0


def _walk(elements: _Plain | _Inflated, order: str, room: int | None = None) -> None:
    """Check the tags of the elements in the next ``room`` bytes (all that follow where None): none claims
    more bytes than the element holding it, and the bytes each claims are there."""
    while room is None or room >= 8:
        tag = elements.read(8)
        if not tag and room is None:
            return
        if len(tag) < 8:
            raise ValueError("the data ends inside an element's tag")
        kind, size = struct.unpack(order + "II", tag)
        size = 0 if kind >> 16 else size  # a small element: up to 4 bytes of data inside its tag
        if room is not None and size > room - 8:
            raise ValueError(f"an element claims {size} bytes, but {room - 8} follow")
        if kind == _MATRIX:
            _walk(elements, order, size)
        elif not elements.skip(size):
            raise ValueError(f"an element claims {size} bytes, more than follow")
        if room is not None:  # nested elements are padded to 8 bytes
            pad = min(-size % 8, room - 8 - size)
            elements.skip(pad)
            room -= 8 + size + pad
    elements.skip(room or 0)


def check_sizes(path: Path) -> None:
    """Raise ValueError where the file at ``path`` is not a MAT 5 file, or one of its elements claims more
    bytes than it holds."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(128)
        order = {b"IM": "<", b"MI": ">"}.get(header[126:128])  # its byte order; then version 1 (MAT 5)
        if len(header) < 128 or 0 in header[:4] or order is None or header[124 + (order == "<")] != 1:
            raise ValueError("its header is not that of a MATLAB 5 file")
        while tag := f.read(8):
            if len(tag) < 8:
                raise ValueError("the file ends inside an element's tag")
            kind, n = struct.unpack(order + "II", tag)
            if n > size - f.tell():
                raise ValueError(f"an element claims {n} bytes, but {size - f.tell()} follow")
            end = f.tell() + n
            if kind in (_MATRIX, _COMPRESSED):
                _walk(_Plain(f), order, n) if kind == _MATRIX else _walk(_Inflated(f, n), order)
            f.seek(end)


def load_svhn(root: Path, split: str) -> ImageSet:
    """``split`` ("train", "test" or "extra") of SVHN."""
    path = root / FILES[split]
    if not path.is_file():
        raise DataError(f"SVHN not found: expected {FILES[split]} in {root} (the official *_32x32.mat files)")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading SVHN's .mat files needs scipy: pip install 'abnet[svhn]'") from None
    try:
        check_sizes(path)
        mat = loadmat(str(path))
    except Exception as err:
        raise DataError(f"{path} is not a readable MATLAB file ({type(err).__name__}: {err}); "
                        "download it again") from None
    x, y = mat.get("X"), mat.get("y")
    if (not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[2] != 3 or x.dtype.kind not in "uif"
            or not isinstance(y, np.ndarray) or y.size != x.shape[3] or y.dtype.kind not in "uif"):
        raise DataError(f"{path}: expected 'X' of shape 32x32x3xN and 'y' of N labels")
    raw = y.reshape(-1).astype(np.int64)
    if ((raw < 0) | (raw > 10)).any():
        raise DataError(f"{path}: label {raw[(raw < 0) | (raw > 10)][0]} is outside 1..10 (10 is the digit 0)")
    labels = torch.from_numpy(raw % 10)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    return ImageSet(images, labels, list(CLASSES))
