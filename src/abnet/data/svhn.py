"""SVHN (cropped digits) in its official MATLAB format.

    ROOT/train_32x32.mat  ROOT/test_32x32.mat  [ROOT/extra_32x32.mat]

Read with ``scipy.io.loadmat`` (as torchvision does) but without torchvision's checksum test, so a
copy of the files loads. Label 10 stands for the digit 0, as in the original files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import ImageSet

CLASSES = [str(d) for d in range(10)]
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


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
        mat = loadmat(str(path))
    except Exception as err:
        raise DataError(f"{path} is not a readable MATLAB file ({type(err).__name__}: {err})") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[2] != 3 or y is None or y.size != x.shape[3]:
        raise DataError(f"{path}: expected 'X' of shape 32x32x3xN and 'y' of N labels")
    raw = y.reshape(-1).astype(np.int64)
    if ((raw < 0) | (raw > 10)).any():
        raise DataError(f"{path}: label {raw[(raw < 0) | (raw > 10)][0]} is outside 1..10 (10 is the digit 0)")
    labels = torch.from_numpy(raw % 10)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    return ImageSet(images, labels, list(CLASSES))
