"""CIFAR-10 and CIFAR-100 in their official python layout, read without trusting the pickles.

    ROOT/cifar-10-batches-py/   data_batch_1 ... data_batch_5, test_batch, batches.meta
    ROOT/cifar-100-python/      train, test, meta

The batch files are pickles. Loading them with plain ``pickle.load`` would run any code a tampered
file carries, so they go through an unpickler that only builds dicts, lists, strings, numbers and
uint8 numpy arrays. Files are recognised by this layout and their content, not by the original
download's checksums (a re-packed batch file is still CIFAR).
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import ImageSet

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}

# The only globals a CIFAR pickle needs: numpy's array reconstruction (numpy 1 and 2 spellings) and,
# for bytes in a protocol-2 pickle written by Python 3, codecs.encode.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys; a one-line :class:`DataError` if it is not one."""
    try:
        raw = path.read_bytes()
        _check_sizes(raw)
        batch = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except Exception as err:
        raise DataError(f"{path} is not a readable CIFAR batch file ({err}); download it again") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch file (it holds a {type(batch).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _check_sizes(raw: bytes) -> None:
    """Walk the pickle's opcodes, building nothing: a damaged length or memo index fails here. The unpickler
    would first reserve what they claim (the bytes a length counts, a memo table up to the index), gigabytes
    for a few flipped bits; here a length must fit in the file (the walk reads it) and an index lie below
    the opcode's own position (each earlier opcode stores at most one memo entry)."""
    for op, arg, pos in pickletools.genops(raw):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > pos:
            raise ValueError(f"memo index {arg} at byte {pos} is out of range")


def _names(path: Path, key: str, values: Any, k: int) -> list[str]:
    """The ``k`` class names stored under ``key``, or "0", "1", ... where the file has none."""
    if values is None:
        return [str(i) for i in range(k)]
    if not isinstance(values, list) or len(values) != k or not all(isinstance(v, (str, bytes)) for v in values):
        raise DataError(f"{path}: '{key}' should list {k} class names; the file is damaged, download it again")
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    except UnicodeDecodeError:
        raise DataError(f"{path}: a class name in '{key}' is not text; the file is damaged, download it again") \
            from None


def _labels(path: Path, key: str, values: Any, n: int, k: int) -> torch.Tensor:
    """The ``n`` labels stored under ``key``, each a class index below ``k``."""
    if not isinstance(values, (list, np.ndarray)) or len(values) != n:
        found = len(values) if isinstance(values, (list, np.ndarray)) else f"a {type(values).__name__}"
        raise DataError(f"{path}: expected {n} '{key}', found {found}")
    bad = next((i for i, v in enumerate(values) if not isinstance(v, (int, np.integer)) or not 0 <= v < k), None)
    if bad is not None:
        raise DataError(f"{path}: label {values[bad]!r} of image {bad} is outside 0..{k - 1}")
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def load_cifar(root: Path, split: str, num_classes: int = 10, coarse: bool = False) -> ImageSet:
    """``split`` ("train" or "test") of CIFAR-10 or CIFAR-100 (fine labels, or coarse with ``coarse``)."""
    folder, files, meta_name = ((root / CIFAR10_DIR, CIFAR10_FILES, "batches.meta") if num_classes == 10
                                else (root / CIFAR100_DIR, CIFAR100_FILES, "meta"))
    expected = [folder / f for f in [*files["train"], *files["test"], meta_name]]
    missing = [p.name for p in expected if not p.is_file()]
    if missing:
        raise DataError(f"CIFAR-{num_classes} not found: expected {', '.join(missing)} in {folder} "
                        f"(the official python version, e.g. cifar-{num_classes}-python.tar.gz unpacked into "
                        f"--data-root {root})")
    label_key = ("labels" if num_classes == 10 else "coarse_labels" if coarse else "fine_labels")
    name_key = ("label_names" if num_classes == 10 else "coarse_label_names" if coarse else "fine_label_names")
    k = 20 if coarse else num_classes
    classes = _names(folder / meta_name, name_key, read_batch(folder / meta_name).get(name_key), k)
    images, labels = [], []
    for name in files[split]:
        batch = read_batch(folder / name)
        data = batch.get("data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{folder / name}: 'data' must be a uint8 array of N x 3072 pixels")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(_labels(folder / name, label_key, batch.get(label_key), len(data), k))
    return ImageSet(torch.cat(images), torch.cat(labels), classes)
