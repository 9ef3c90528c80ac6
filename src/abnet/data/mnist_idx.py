"""Fashion-MNIST in its official idx format (plain or gzipped), as 3-channel uint8 images.

    ROOT/train-images-idx3-ubyte[.gz]  ROOT/train-labels-idx1-ubyte[.gz]
    ROOT/t10k-images-idx3-ubyte[.gz]   ROOT/t10k-labels-idx1-ubyte[.gz]

(``ROOT/FashionMNIST/raw/``, torchvision's layout, works too.) Read here rather than through
torchvision's FashionMNIST, which wants its own folder layout and uncompressed files. The grey
images are repeated over three channels so every model reads them unchanged.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import ImageSet

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (``.gz`` or plain) as an array of its declared shape."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is not a readable gzip file ({err}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise DataError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header ends early")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != math.prod(shape):  # (exact: numpy's prod wraps around on a damaged, huge shape)
        raise DataError(f"{path} is truncated or padded: header says {shape}, "
                        f"found {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_fashion_mnist(root: Path, split: str) -> ImageSet:
    """``split`` ("train" or "test") of Fashion-MNIST."""
    paths = [_find(root, stem) for stem in FILES[split]]
    if None in paths:
        names = ", ".join(f"{s}[.gz]" for s in FILES[split])
        raise DataError(f"Fashion-MNIST not found: expected {names} in {root} (the official idx files)")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{paths[0]} and {paths[1]} do not match: images {images.shape}, labels {labels.shape}")
    if labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"{paths[1]}: label {labels.max()} is outside 0..{len(CLASSES) - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), list(CLASSES))
