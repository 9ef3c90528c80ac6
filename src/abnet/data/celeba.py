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

import logging
from pathlib import Path

import torch

from ..errors import DataError
from .folder import FolderIndex

IMAGES = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
SPLITS = {"train": 0, "val": 1, "test": 2}

log = logging.getLogger("abnet")


def _base(root: Path) -> Path:
    for base in (root, root / "celeba"):
        if (base / ATTRIBUTES).is_file():
            return base
    raise DataError(f"CelebA not found: expected {IMAGES}/, {ATTRIBUTES} and {PARTITION} in {root}")


def _lines(path: Path) -> list[str]:
    """The lines of a CelebA list file (ASCII text); a damaged one, with bytes that are not text, is a DataError."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path} line {line} holds bytes that are not text (0x{raw[err.start]:02x}): the file is "
                        "damaged; download it again") from None


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Attribute names and, per image file name, its row of -1/1 values."""
    lines = _lines(path)
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
                            f"got {line.strip()[:80]!r}")
        rows[parts[0]] = [int(v) for v in parts[1:]]
    if lines[0].strip() != str(len(rows)):
        log.warning("%s line 1 should count the %d rows that follow, but reads %r: the file may be truncated or "
                    "damaged", path, len(rows), lines[0].strip()[:20])
    return names, rows


def read_partition(path: Path) -> dict[str, int]:
    """Per image file name, its split: 0 train, 1 val, 2 test."""
    if not path.is_file():
        raise DataError(f"CelebA's partition file is missing: expected {path}")
    split_of = {}
    for number, line in enumerate(_lines(path), start=1):
        parts = line.split()
        if parts and (len(parts) != 2 or parts[1] not in ("0", "1", "2")):
            raise DataError(f"{path} line {number}: expected a file name and 0, 1 or 2 (train, val, test), "
                            f"got {line.strip()[:80]!r}")
        if parts:
            split_of[parts[0]] = int(parts[1])
    return split_of


def load_celeba(root: Path, split: str, size: int) -> FolderIndex:
    """The files and attributes of ``split`` ("train", "val" or "test") of the official partition."""
    base = _base(root)
    names, rows = read_attributes(base / ATTRIBUTES)
    split_of = read_partition(base / PARTITION)
    if len(split_of) < len(rows):
        log.warning("%s lists %d of the %d images of %s; the others are in no split", base / PARTITION,
                    len(split_of), len(rows), ATTRIBUTES)
    wanted = [f for f, s in split_of.items() if s == SPLITS[split]]
    if not wanted:
        raise DataError(f"{base / PARTITION} puts no image in the {split} split (0 train, 1 val, 2 test)")
    missing_rows = [f for f in wanted if f not in rows]
    if missing_rows:
        raise DataError(f"{base / ATTRIBUTES} has no row for {len(missing_rows)} image(s) of {PARTITION}, "
                        f"e.g. {missing_rows[0]!r}; the attribute and partition files do not match")
    folder = base / IMAGES
    missing_files = [f for f in wanted if not (folder / f).is_file()]
    if missing_files:
        raise DataError(f"{len(missing_files)} image(s) of the {split} partition are not in {folder}, "
                        f"e.g. {missing_files[0]}")
    labels = torch.tensor([rows[f] for f in wanted], dtype=torch.float32).clamp_min(0)  # -1 -> 0
    return FolderIndex([folder / f for f in wanted], labels.view(-1, len(names)), names, size)
