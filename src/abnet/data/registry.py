"""Data sets by name: what ``--data`` accepts, where each lives on disk, and how it is loaded.

Each name maps to a :class:`DataSpec`. :func:`load_dataset` returns an in-memory
:class:`~abnet.data.base.ImageSet` (small images: the fast path) or, for large images in a folder,
a :class:`~abnet.data.folder.FolderIndex` to stream; :func:`make_loader` turns either into batches.
A data set without a validation split gets one carved from its training set, deterministically
by fraction.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError
from .base import ImageSet
from .celeba import load_celeba
from .cifar import load_cifar
from .folder import IN_MEMORY_MAX_SIZE, FolderIndex, FolderLoader, load_folder_in_memory, scan
from .loader import InMemoryLoader
from .mnist_idx import load_fashion_mnist
from .shapes import make_shapes, make_shapes_multi, make_shapes_shortcut
from .svhn import load_svhn

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VAL_SPLIT_SEED = 0  # the carved validation split does not change with the training seed


@dataclass(frozen=True)
class DataOptions:
    """Loading options beyond the split: where the files are and a few per-set choices."""

    root: Path | None = None
    image_size: int | None = None  # shapes*: generated size; imagefolder: resize/crop size
    seed: int = 0  # shapes*: which generated set
    val_fraction: float = 0.1  # share of the training set held out where there is no val split
    coarse: bool = False  # cifar100: the 20 super-classes


@dataclass(frozen=True)
class DataSpec:
    """One named data set: its native splits, normalisation, and how to read a split."""

    name: str
    read: Callable[[str, DataOptions, int | None], ImageSet | FolderIndex]  # (split, options, limit hint)
    splits: tuple[str, ...]  # native splits; "val" is carved from "train" when absent
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD
    layout: str = ""  # what --data-root must hold, for messages
    padding: int = 4  # random-crop padding of the in-memory path
    flip: bool = True  # random horizontal flips (not for digits)
    extra_splits: tuple[str, ...] = field(default=())  # readable on request, never carved
    find_splits: Callable[[Path], tuple[str, ...]] | None = None  # native splits found under the root
    any_size: bool = False  # files read at any size: by default the model's input size (image folders, CelebA)
    attributes: bool = False  # labels are 0/1 attributes (multi-label), not one class per image

    def native_splits(self, o: DataOptions) -> tuple[str, ...]:
        return self.find_splits(o.root) if self.find_splits and o.root else self.splits

    @property
    def needs_root(self) -> bool:
        return bool(self.layout)

    def eval_split(self, o: DataOptions) -> str:
        """The split ``abnet eval`` reads by default: test where there is one, else val."""
        return "test" if "test" in self.native_splits(o) else "val"


SHAPES_SIZES = {"train": 10_000, "val": 2_000, "test": 2_000}


def _generated(make: Callable[..., ImageSet]) -> Callable[[str, DataOptions, int | None], ImageSet]:
    """The reader of a generated set (shapes, shapes-multi, shapes-shortcut): SHAPES_SIZES images per split, or
    ``limit``."""

    def read(split: str, o: DataOptions, limit: int | None) -> ImageSet:
        n = SHAPES_SIZES[split] if limit is None else min(limit, SHAPES_SIZES[split])  # generate no more than used
        return make(n, size=o.image_size or 32, seed=o.seed, split=split)

    return read


def _read_folder(split: str, o: DataOptions, limit: int | None) -> ImageSet | FolderIndex:
    root, size = o.root, o.image_size or 224
    base = root / "train" if (root / "train").is_dir() else root
    index = scan(base, size=size) if split == "train" else scan(root / split, scan(base).classes, size)
    return load_folder_in_memory(index) if size <= IN_MEMORY_MAX_SIZE else index


def _read_celeba(split: str, o: DataOptions, limit: int | None) -> ImageSet | FolderIndex:
    index = load_celeba(o.root, split, o.image_size or 224)
    if limit is not None and limit < len(index):  # decode only what is used
        index = index.subset(torch.arange(limit))
    return load_folder_in_memory(index) if index.size <= IN_MEMORY_MAX_SIZE else index


def _folder_splits(root: Path) -> tuple[str, ...]:
    """train/ (or the root itself) and whichever of val/ and test/ exist."""
    return ("train", *(s for s in ("val", "test") if (root / s).is_dir() and (root / "train").is_dir()))


SHAPES = DataSpec("shapes", _generated(make_shapes), ("train", "val", "test"), mean=(0.5, 0.5, 0.5),
                  std=(0.25, 0.25, 0.25))
SHAPES_MULTI = DataSpec("shapes-multi", _generated(make_shapes_multi), ("train", "val", "test"), mean=(0.5, 0.5, 0.5),
                        std=(0.25, 0.25, 0.25), attributes=True)  # 10 binary attributes with a mask each
SHAPES_SHORTCUT = DataSpec("shapes-shortcut", _generated(make_shapes_shortcut), ("train", "val", "test"),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # a class marker in train; see shapes.py
DATASETS = {spec.name: spec for spec in (
    SHAPES,
    SHAPES_MULTI,
    SHAPES_SHORTCUT,
    DataSpec("cifar10", lambda split, o, _: load_cifar(o.root, split, 10), ("train", "test"),
             layout="cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)"),
    DataSpec("cifar100", lambda split, o, _: load_cifar(o.root, split, 100, o.coarse), ("train", "test"),
             mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
             layout="cifar-100-python/ (train, test, meta)"),
    DataSpec("svhn", lambda split, o, _: load_svhn(o.root, split), ("train", "test"), extra_splits=("extra",),
             flip=False,
             mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
             layout="train_32x32.mat and test_32x32.mat"),
    DataSpec("fashion-mnist", lambda split, o, _: load_fashion_mnist(o.root, split), ("train", "test"),
             mean=(0.2860,) * 3, std=(0.3530,) * 3, padding=2,
             layout="train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-*[.gz]"),
    DataSpec("imagefolder", _read_folder, ("train", "val", "test"), mean=IMAGENET_MEAN, std=IMAGENET_STD,
             find_splits=_folder_splits, any_size=True,
             layout="train/<class>/<images> and optionally val/<class>/<images> (or just <class>/<images>)"),
    DataSpec("celeba", _read_celeba, ("train", "val", "test"), mean=IMAGENET_MEAN, std=IMAGENET_STD, any_size=True,
             attributes=True, layout="img_align_celeba/, list_attr_celeba.txt and list_eval_partition.txt"),
)}


def data_spec(name: str) -> DataSpec:
    """The spec of a data set name, or a :class:`DataError` that says what is available."""
    if name in DATASETS:
        return DATASETS[name]
    available = ", ".join(DATASETS)
    close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise DataError(f"unknown data set {name!r}{hint}; available: {available}")


def check_flip_tta(name: str, flag: str) -> None:
    """Refuse flip test-time augmentation (``flag``) for a data set whose images are never mirrored in training,
    such as digits, where the mirror image shows something else."""
    if not data_spec(name).flip:
        raise DataError(f"{flag} averages each image with its mirror image, but {name}'s images are not mirrored "
                        f"(a mirrored digit reads differently); drop {flag}")


def load_dataset(
    name: str, split: str = "train", limit: int | None = None, options: DataOptions | None = None,
    hold_out: bool = True,
) -> ImageSet | FolderIndex:
    """Load ``split`` of a named data set, at most ``limit`` samples.

    Where the data set has no "val" split, "val" is a fixed ``val_fraction`` of the training set and
    "train" is the rest (the whole training split with ``hold_out=False``, when "test" validates).
    """
    spec = data_spec(name)
    o = options or DataOptions()
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    if spec.needs_root:
        if o.root is None:
            raise DataError(f"{name} is read from disk: pass --data-root DIR, a folder holding {spec.layout}")
        if not Path(o.root).is_dir():
            raise DataError(f"--data-root {o.root} is not a folder; it should hold {spec.layout}")
        o = DataOptions(**{**o.__dict__, "root": Path(o.root)})
    native = spec.native_splits(o)
    readable = native + spec.extra_splits + (() if "val" in native else ("val",))
    if split not in readable:
        raise DataError(f"data set {name!r} has no split {split!r}; choose one of {', '.join(readable)}")
    if split in ("train", "val") and "val" not in native and (hold_out or split == "val"):
        data = spec.read("train", o, None)
        held = _held_out(len(data), o.val_fraction)
        keep = held if split == "val" else ~held
        data = data.subset(keep.nonzero().squeeze(1))
    else:
        data = spec.read(split, o, limit)
    if limit is not None and limit < len(data):
        data = data.subset(torch.arange(limit))
    if len(data) == 0:
        raise DataError(f"split {split!r} of {name} is empty")
    return data


def _held_out(n: int, fraction: float) -> torch.Tensor:
    if not 0 < fraction < 1:
        raise DataError(f"val-fraction must lie strictly between 0 and 1, got {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    held = torch.zeros(n, dtype=torch.bool)
    held[order[:max(1, round(n * fraction))]] = True
    return held


def make_loader(
    data: ImageSet | FolderIndex, spec: DataSpec, batch_size: int, train: bool = False, seed: int = 0,
    channels_last: bool = False, workers: int = 2, cutout_size: int = 0, rank: int = 0, world: int = 1,
    padding: int | None = None,
) -> InMemoryLoader | FolderLoader:
    """Batches of a loaded split: the in-memory fast path for an ImageSet, worker streaming for files.
    ``cutout_size`` > 0 adds Cutout to training batches; ``padding`` replaces the data set's random-crop shift
    (in-memory sets only); ``rank``/``world`` give this process its share of each global batch in multi-process
    training."""
    if isinstance(data, ImageSet):
        padding = spec.padding if padding is None else padding
        return InMemoryLoader(data, batch_size, spec.mean, spec.std, train=train, seed=seed, padding=padding,
                              flip=spec.flip, cutout_size=cutout_size, channels_last=channels_last,
                              rank=rank, world=world)
    if padding is not None:
        raise DataError("--crop-padding applies to data sets held in memory; image files are augmented with random "
                        "resized crops instead: leave --crop-padding out")
    return FolderLoader(data, batch_size, spec.mean, spec.std, train=train, seed=seed, workers=workers,
                        cutout_size=cutout_size, channels_last=channels_last, rank=rank, world=world)
