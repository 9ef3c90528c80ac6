"""Data sets by name: what ``--data`` accepts, and how each is loaded and normalised."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import DataError
from .base import ImageSet
from .shapes import make_shapes

# Names of data sets that the design promises and this version cannot read yet.
PLANNED = ("cifar10", "cifar100", "svhn", "fashion-mnist", "imagefolder", "celeba")


@dataclass(frozen=True)
class DataSpec:
    """How to load one named data set."""

    name: str
    splits: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_sizes: dict[str, int]  # generated sets: samples per split
    default_image_size: int


SHAPES = DataSpec(
    name="shapes",
    splits=("train", "val", "test"),
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    default_sizes={"train": 10_000, "val": 2_000, "test": 2_000},
    default_image_size=32,
)
DATASETS = {SHAPES.name: SHAPES}


def data_spec(name: str) -> DataSpec:
    """The spec of a data set name, or a :class:`DataError` that says what is available."""
    if name in DATASETS:
        return DATASETS[name]
    available = ", ".join(DATASETS)
    if name in PLANNED:
        raise DataError(f"data set {name!r} is not supported by this version of abnet yet; available: {available}")
    close = difflib.get_close_matches(name, list(DATASETS) + list(PLANNED), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise DataError(f"unknown data set {name!r}{hint}; available: {available}")


def load_dataset(
    name: str, split: str = "train", limit: int | None = None, image_size: int | None = None, seed: int = 0
) -> ImageSet:
    """Load ``split`` of a named data set, at most ``limit`` samples.

    For the generated ``shapes`` set, ``seed`` picks the set and ``image_size`` its resolution.
    """
    spec = data_spec(name)
    if split not in spec.splits:
        raise DataError(f"data set {name!r} has no split {split!r}; choose one of {', '.join(spec.splits)}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    n = spec.default_sizes[split] if limit is None else min(limit, spec.default_sizes[split])
    return make_shapes(n, size=image_size or spec.default_image_size, seed=seed, split=split)
