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
        raw = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except Exception as err:
        raise DataError(f"{path} is not a readable CIFAR batch file ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} is not a CIFAR batch file (it holds a {type(raw).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _names(values: list) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


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
    meta = read_batch(folder / meta_name)
    name_key = ("label_names" if num_classes == 10 else "coarse_label_names" if coarse else "fine_label_names")
    classes = _names(meta.get(name_key, []))
    images, labels = [], []
    for name in files[split]:
        batch = read_batch(folder / name)
        data, batch_labels = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{folder / name}: 'data' must be a uint8 array of N x 3072 pixels")
        if batch_labels is None or len(batch_labels) != len(data):
            raise DataError(f"{folder / name}: expected {len(data)} '{label_key}', found "
                            f"{0 if batch_labels is None else len(batch_labels)}")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(list(batch_labels), dtype=torch.int64))
    x, y = torch.cat(images), torch.cat(labels)
    k = len(classes) or (20 if coarse else num_classes)
    bad = ((y < 0) | (y >= k)).nonzero()
    if len(bad):
        raise DataError(f"{folder}: label {int(y[bad[0, 0]])} of image {int(bad[0, 0])} is outside 0..{k - 1}")
    return ImageSet(x, y, classes or [str(i) for i in range(k)])
