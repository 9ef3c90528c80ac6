"""What a checkpoint says about its model: a typed, versioned record stored as plain JSON.

The same dict sits in ``last.pt`` (so ``torch.load(weights_only=True)`` reads it), in the header of
``best.safetensors`` and in a ``save_pretrained`` folder's ``config.json``. Files written before the
record had a version (no ``version`` key) read as version 0: the same fields, fewer optional ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..data.registry import DataOptions

META_VERSION = 1
REQUIRED = ("model_config", "classes", "mean", "std", "image_size")
INITIAL_WEIGHTS = ("pretrained", "weights")  # create_model arguments that fetch starting weights


@dataclass(frozen=True)
class CheckpointMeta:
    """How to rebuild a model and feed it: registry name and arguments, class names, input normalisation,
    image size, and where known the data set, training settings and validation figures.

    Keys a newer abnet of the same version added are kept in ``extra`` and written back unchanged.
    """

    model_config: dict[str, Any]  # {"model": registry name, **create_model arguments}
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: tuple[int, int]  # (height, width) the model was trained at
    data: str | None = None
    multi_label: bool = False  # one binary output per class (attributes) instead of one class per image
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None  # the epoch the weights are from (1-based)
    val_accuracy: float | None = None  # perception branch, validation split
    val_att_accuracy: float | None = None  # attention branch, validation split
    val_score: float | None = None  # what chose the best epoch (accuracy, or balanced accuracy for attributes)
    converted_from: str | None = None  # the file `abnet convert` read, for weights trained elsewhere
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = META_VERSION

    @property
    def model_name(self) -> str:
        return self.model_config["model"]

    @property
    def build_config(self) -> dict[str, Any]:
        """The ``create_model`` arguments that rebuild the architecture (never fetching initial weights)."""
        return {k: v for k, v in self.model_config.items() if k != "model" and k not in INITIAL_WEIGHTS}

    def data_options(self, root: Path | None = None, seed: int = 0) -> DataOptions:
        """How this checkpoint's data was read (image size, coarse labels, validation share), for the data set's
        files under ``root``; ``seed`` picks a generated set."""
        from ..data.registry import DataOptions  # data's readers are not needed to build a model

        trained = {key: self.train_config[key] for key in ("coarse", "val_fraction") if key in self.train_config}
        return DataOptions(root=root, image_size=self.image_size[0], seed=seed, **trained)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: lists, numbers, strings; unset optional fields left out."""
        out: dict[str, Any] = {"version": self.version}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("version", "extra") or (value is None and f.default is None):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return {**out, **self.extra}

    @classmethod
    def of(cls, meta: CheckpointMeta | Mapping[str, Any], where: str) -> CheckpointMeta:
        """``meta`` itself, or a stored record read and checked by :meth:`from_dict`."""
        return meta if isinstance(meta, cls) else cls.from_dict(meta, where)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> CheckpointMeta:
        """Read and check a stored record; a one-line :class:`CheckpointError` naming ``where`` otherwise."""
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{where}: its metadata is a {type(raw).__name__}, not a JSON object")
        version = raw.get("version", 0)
        if not _is_int(version) or version < 0:
            raise CheckpointError(f"{where}: metadata version {version!r} is not a whole number")
        if version > META_VERSION:
            raise CheckpointError(f"{where} was written by a newer abnet (metadata version {version}; this abnet "
                                  f"reads up to {META_VERSION}); upgrade abnet to read it")
        missing = [name for name in REQUIRED if name not in raw]
        if missing:
            raise CheckpointError(f"{where}: its metadata lacks {', '.join(map(repr, missing))}; it was not written "
                                  "by abnet, or not completely")
        known = {f.name for f in fields(cls)} - {"extra", "version"}
        values = {name: _check(name, raw[name], where) for name in known if name in raw}
        meta = cls(**values, extra={k: v for k, v in raw.items() if k not in known | {"version"}})
        if len(meta.mean) != len(meta.std):
            raise CheckpointError(f"{where}: its metadata has {len(meta.mean)} mean values but {len(meta.std)} std "
                                  "values; give one of each per input channel")
        num_classes = meta.model_config.get("num_classes")
        if num_classes is not None and num_classes != len(meta.classes):
            raise CheckpointError(f"{where}: its model has {num_classes} outputs but its metadata names "
                                  f"{len(meta.classes)} classes")
        return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(name: str, value: Any, where: str) -> Any:
    """``value`` of field ``name`` in its stored type (tuples for lists), or a one-line error."""
    def bad(expected: str) -> CheckpointError:
        return CheckpointError(f"{where}: metadata field {name!r} must be {expected}, got {str(value)[:60]!r}")

    if name == "model_config":
        if not isinstance(value, Mapping) or not isinstance(value.get("model"), str):
            raise bad("an object naming its model, e.g. {\"model\": \"resnet20_abn\"}")
        return dict(value)
    if name == "classes":
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) for c in value):
            raise bad("a non-empty list of class names")
        return tuple(value)
    if name in ("mean", "std"):
        if not isinstance(value, (list, tuple)) or not value or not all(_is_number(v) for v in value):
            raise bad("a list of numbers, one per input channel")
        if name == "std" and min(value) <= 0:
            raise bad("positive")
        return tuple(float(v) for v in value)
    if name == "image_size":
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
            raise bad("[height, width] in pixels")
        return tuple(value)
    if name == "train_config":
        if not isinstance(value, Mapping):
            raise bad("an object")
        return dict(value)
    if name == "multi_label":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if value is None:
        return None
    if name == "epoch" and not (_is_int(value) and value >= 0):
        raise bad("a whole number")
    if name.startswith("val_") and not _is_number(value):
        raise bad("a number")
    if name in ("data", "converted_from", "license") and not isinstance(value, str):
        raise bad("a string")
    return float(value) if name.startswith("val_") else value
