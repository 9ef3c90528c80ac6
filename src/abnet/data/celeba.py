"""CelebA's 40 binary facial attributes in the official layout, for multi-label (multi-task) work.

    ROOT/img_align_celeba/000001.jpg ...
    ROOT/list_attr_celeba.txt        line 1: image count; line 2: the 40 attribute names;
                                     then "000001.jpg  -1  1 ..." (1 = present, -1 = absent)
    ROOT/list_eval_partition.txt     "000001.jpg 0" (0 train, 1 val, 2 test)

(``ROOT/celeba/``, torchvision's layout, works too.) Labels are (N, 40) float tensors of 0/1, so
training uses a binary cross-entropy per attribute. Read here rather than through torchvision's
CelebA, which checks the original download's checksums and needs its identity and landmark files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError
from .folder import FolderIndex

IMAGES = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
SPLITS = {"train": 0, "val": 1, "test": 2}


def _base(root: Path) -> Path:
    for base in (root, root / "celeba"):
        if (base / ATTRIBUTES).is_file():
            return base
    raise DataError(f"CelebA not found: expected {IMAGES}/, {ATTRIBUTES} and {PARTITION} in {root}")


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Attribute names and, per image file name, its row of -1/1 values."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if len(lines) < 2:
        raise DataError(f"{path} is too short: expected a count line and a line of attribute names")
    names = lines[1].split()
    rows: dict[str, list[int]] = {}
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or any(v not in ("1", "-1", "0") for v in parts[1:]):
            raise DataError(f"{path} line {number}: expected a file name and {len(names)} values of 1 or -1, "
                            f"got {len(parts) - 1} values")
        rows[parts[0]] = [int(v) for v in parts[1:]]
    return names, rows


def load_celeba(root: Path, split: str, size: int) -> FolderIndex:
    """The files and attributes of ``split`` ("train", "val" or "test") of the official partition."""
    base = _base(root)
    names, rows = read_attributes(base / ATTRIBUTES)
    if not (base / PARTITION).is_file():
        raise DataError(f"CelebA's partition file is missing: expected {base / PARTITION}")
    wanted = [line.split()[0] for line in (base / PARTITION).read_text().splitlines()
              if len(line.split()) == 2 and line.split()[1] == str(SPLITS[split])]
    missing_rows = [f for f in wanted if f not in rows]
    if missing_rows:
        raise DataError(f"{base / ATTRIBUTES} has no row for {len(missing_rows)} image(s) of the partition, "
                        f"e.g. {missing_rows[0]}; the attribute and partition files do not match")
    folder = base / IMAGES
    missing_files = [f for f in wanted if not (folder / f).is_file()]
    if missing_files:
        raise DataError(f"{len(missing_files)} image(s) of the {split} partition are not in {folder}, "
                        f"e.g. {missing_files[0]}")
    labels = torch.tensor([rows[f] for f in wanted], dtype=torch.float32).clamp_min(0)  # -1 -> 0
    return FolderIndex([folder / f for f in wanted], labels.view(-1, len(names)), names, size)
