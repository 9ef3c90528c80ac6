"""The resolved settings of a training run, saved as ``config.json`` in the run folder."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..data.registry import DataOptions, data_spec
from ..errors import AbnetError
from ..models import MASK_MODES, model_info
from .guidance import MAP_LOSSES
from .precision import PRECISIONS

SCHEDULES = ("step", "cosine")
VAL_SPLITS = ("val", "test")
# The default recipe's peak learning rate per 128 images of batch (scaled linearly with the batch) and its label
# smoothing: the long runs of results/recipe_study.md.
LR_PER_128_IMAGES = 0.2
LABEL_SMOOTHING = 0.1
WARMUP_EPOCHS = 1.0  # at most half the run: a 1-epoch run warms up for half an epoch, then decays
# What runs trained with before the default recipe, for the settings a saved config.json of an older abnet lacks.
DEFAULTS_BEFORE_RECIPE = {"lr": 0.1, "weight_decay": 1e-4, "schedule": "step", "warmup_epochs": 0.0,
                          "nesterov": False, "label_smoothing": 0.0}


@dataclass
class TrainConfig:
    """Everything that decides a run. The default recipe is the one results/recipe_study.md found better than the
    ABN research code's (lr 0.1 divided by 10 at 50 % and 75 % of the epochs, weight decay 1e-4) in short and long
    runs: SGD with Nesterov momentum 0.9, lr 0.2 per 128 images of batch, a 1-epoch linear warm-up (at most half
    the run), then cosine to zero, label smoothing 0.1, weight decay 5e-4, batch 128, 30 epochs. The paper recipes
    in configs/ pin theirs."""

    model: str = "resnet20_abn"
    data: str = "shapes"
    data_root: str | None = None  # folder of an on-disk data set; the generated shapes set needs none
    out: str = "runs/abnet"
    epochs: int = 30
    batch_size: int = 128
    lr: float | None = None  # peak learning rate (None: 0.2 x batch_size / 128, see peak_lr)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine": to zero; "step": x gamma at each milestone
    milestones: list[float] | None = None  # epochs where "step" multiplies the lr by gamma (50 %, 75 %)
    gamma: float = 0.1
    nesterov: bool = True  # Nesterov momentum
    # class-index targets: cross-entropy against (1 - s) one-hot + s uniform (None: 0.1, and 0 on attribute data)
    label_smoothing: float | None = None
    warmup_epochs: float | None = None  # linear warm-up from lr/10, in (fractional) epochs (None: see warmup)
    pretrained: bool = False  # tv:/timm: models: start from the library's weights in the local cache
    weights: str | None = None  # start from these weights: an abnet checkpoint or run, a research-code or tv/timm file
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" (by the hardware), "fp32", "bf16" or "fp16" (CUDA); config.json keeps the one used
    compile: bool = False  # torch.compile the model (eager with a message if it cannot compile)
    sync_bn: bool = False  # torchrun on GPUs: batch-norm statistics over the global batch
    source: str | None = None  # where a recipe's settings come from (paper, code); kept in config.json
    mask: str = "residual"  # ABN models only
    map_kernel: int = 3  # ABN models only: the map head's conv size
    shared_perception: bool = False  # multi-task (_abn_mt) models: one perception branch for all tasks
    map_targets: str | None = None  # guide the map: "masks", "boxes:DIR" or a DIR of target maps (see data/targets)
    map_loss: str = "l2"  # l2, energy or bce on an ABN's map; rrr (input gradients) for plain models
    map_weight: float = 10.0  # the map loss's weight beside the two branches' losses (1 barely moved the map)
    map_fraction: float = 1.0  # share of the training images whose targets are used (fixed by the seed)
    pos_weight: str | None = None  # attribute data: "balanced" weighs each attribute's positives by neg/pos
    seed: int = 0
    image_size: int | None = None  # side images are made or read at (default: 32, or the model's own for folders)
    limit_train: int | None = None
    limit_val: int | None = None
    val_fraction: float = 0.1  # share of the training set held out where the data set has no val split
    val_split: str = "val"  # evaluate each epoch on "val" or on "test" (then the whole training split trains)
    eval_flip: bool = False  # evaluation: average the logits of each image and its mirror image
    eval_every: int = 1  # evaluate after every N-th epoch (and always after the last)
    coarse: bool = False  # cifar100: the 20 super-classes instead of the 100 classes
    workers: int = 2  # DataLoader workers for image folders of large images
    cutout: int = 0  # side of the Cutout square in pixels (0: off)
    crop_padding: int | None = None  # in-memory sets: random-crop shift in pixels (None: the data set's; 0: no crops)
    channels_last: bool = True  # faster convolutions on this CPU (benchmarks/train_step.py)
    deterministic: bool = False  # GPUs: deterministic cuDNN/cuBLAS kernels, so a seed gives the same numbers
    log_every: int | None = None  # steps between reading the loss back (and checking for a stop): 1 on CPUs, 50 on GPUs

    def validate(self) -> TrainConfig:
        """Raise an :class:`AbnetError` naming the first setting that makes no sense."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "map_kernel": self.map_kernel, "gamma": self.gamma}
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise AbnetError(f"{name.replace('_', '-')} must be > 0, got {value}")
        for name in ("momentum", "weight_decay", "warmup_epochs", "seed", "workers", "cutout", "crop_padding"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise AbnetError(f"{name.replace('_', '-')} must be >= 0, got {value}")
        if self.eval_every < 1:
            raise AbnetError(f"eval-every must be >= 1, got {self.eval_every}")
        for name in ("limit_train", "limit_val", "image_size", "log_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AbnetError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0 < self.val_fraction < 1:
            raise AbnetError(f"val-fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.milestones is not None and sorted(self.milestones) != self.milestones:
            raise AbnetError(f"milestones must be increasing epochs, got {self.milestones}")
        if self.milestones is not None and self.schedule != "step":
            raise AbnetError(f"milestones apply to the step schedule, not {self.schedule}; add --schedule step")
        if self.nesterov and self.momentum == 0:
            raise AbnetError("Nesterov momentum needs a momentum above 0; add --no-nesterov (or drop --momentum 0)")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise AbnetError(f"label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise AbnetError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.val_split not in VAL_SPLITS:
            raise AbnetError(f"val-split must be one of {', '.join(VAL_SPLITS)}, got {self.val_split!r}")
        if self.schedule not in SCHEDULES:
            raise AbnetError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.mask not in MASK_MODES:
            raise AbnetError(f"unknown mask mode {self.mask!r}; choose one of {', '.join(MASK_MODES)}")
        if self.map_loss not in MAP_LOSSES:
            raise AbnetError(f"unknown map loss {self.map_loss!r}; choose one of {', '.join(MAP_LOSSES)}")
        if not 0 <= self.map_fraction <= 1 or self.map_weight < 0:
            raise AbnetError(f"map-fraction must lie in [0, 1] and map-weight be >= 0, got {self.map_fraction} "
                             f"and {self.map_weight}")
        if self.map_targets is not None:
            info = model_info(self.model)
            if info.is_abn == (self.map_loss == "rrr"):
                raise AbnetError(f"--map-loss {self.map_loss} does not apply to {self.model}: ABN models take l2, "
                                 "energy or bce on their map; plain models take rrr (their input gradients)")
        if self.pos_weight not in (None, "balanced"):
            raise AbnetError(f"pos-weight must be 'balanced' (or left out), got {self.pos_weight!r}")
        if self.map_kernel % 2 == 0:
            raise AbnetError(f"map-kernel must be odd (1, 3, 5, ...), got {self.map_kernel}")
        return self

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: ``lr``, or by default 0.2 per 128 images of batch (the linear scaling
        rule: the recipe study's best short runs used 0.05 at batch 32, its long runs 0.2 at batch 128)."""
        return self.lr if self.lr is not None else LR_PER_128_IMAGES * self.batch_size / 128

    @property
    def warmup(self) -> float:
        """The warm-up's length in epochs: ``warmup_epochs``, or by default 1 epoch but at most half the run (a
        1-epoch run would otherwise never come down from its peak)."""
        return self.warmup_epochs if self.warmup_epochs is not None else min(WARMUP_EPOCHS, self.epochs / 2)

    def resolved(self) -> TrainConfig:
        """These settings with the defaults that depend on the model, the data or the batch filled in, so that
        config.json records the values used: the learning rate (:attr:`peak_lr`) and warm-up (:attr:`warmup`); label
        smoothing (0.1 on class labels, 0 on attribute data, which has no classes to smooth over); and the image size
        of data sets read at any size (image folders, CelebA): the model's registered input size unless
        ``image_size`` says."""
        spec = data_spec(self.data)
        values: dict[str, Any] = {"lr": self.peak_lr, "warmup_epochs": self.warmup}
        if self.label_smoothing is None:
            values["label_smoothing"] = 0.0 if spec.attributes else LABEL_SMOOTHING
        if self.image_size is None and spec.any_size:
            values["image_size"] = model_info(self.model).input_size[-1]
        return replace(self, **values)

    def data_options(self) -> DataOptions:
        """How to read the data set these settings name."""
        return DataOptions(root=Path(self.data_root) if self.data_root else None, image_size=self.image_size,
                           seed=self.seed, val_fraction=self.val_fraction, coarse=self.coarse)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_sources(cls, flags: dict[str, Any], config_file: str | None = None, resume: bool = False) -> TrainConfig:
        """The settings of ``abnet train``: the resumed run's ``config.json`` (``resume``: the run in
        ``flags["out"]``) or a ``--config`` file, overridden by the flags given."""
        if resume:
            if not flags.get("out"):
                raise AbnetError("--resume needs --out, the run folder to continue")
            values = with_old_defaults(read_config(Path(flags["out"]) / "config.json"))
        else:
            values = read_config(config_file) if config_file else {}
        values.update(flags)
        if "milestones" not in flags and values.get("schedule", cls.schedule) != "step":
            values.pop("milestones", None)  # a file's milestones, moot under the schedule the flags chose
        missing = [name for name in ("model", "data", "out") if name not in values]
        if missing:
            raise AbnetError(f"{', '.join('--' + m for m in missing)} required (as flags or in --config)")
        return cls.from_dict(values)

    @classmethod
    def from_run(cls, values: dict[str, Any], source: str) -> TrainConfig:
        """A saved run's settings (its config.json or checkpoint record): settings that an older abnet did not
        write yet take the values that run trained with, not today's defaults."""
        return cls.from_dict(with_old_defaults(values), source)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict (e.g. a saved ``config.json``), rejecting unknown keys by name."""
        if "amp" in values:  # config.json of runs before --precision: amp true = the hardware's mixed precision
            values = {"precision": "auto" if values["amp"] else "fp32", **values}
            del values["amp"]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            hints = [f"{u!r}" + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(u, known, 1))
                     for u in unknown]
            raise AbnetError(f"{source} has unknown setting(s) {', '.join(hints)}; known: {', '.join(sorted(known))}")
        for f in fields(cls):
            if f.name in values and not _has_type(values[f.name], f.type):
                raise AbnetError(f"{source}: setting {f.name!r} must be {f.type}, got {values[f.name]!r}")
        return cls(**values)

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate at optimizer step ``step`` (0-based): warm-up, then the schedule."""
        epoch, lr, warmup = step / steps_per_epoch, self.peak_lr, self.warmup
        if epoch < warmup:
            return lr * (0.1 + 0.9 * epoch / warmup)
        if self.schedule == "cosine":
            span = max(self.epochs - warmup, 1e-8)
            return 0.5 * lr * (1 + math.cos(math.pi * min((epoch - warmup) / span, 1.0)))
        milestones = self.milestones if self.milestones is not None else [0.5 * self.epochs, 0.75 * self.epochs]
        return lr * self.gamma ** sum(epoch >= m for m in milestones)


def with_old_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A saved run's settings, where an older abnet did not write a setting: the value that run trained with."""
    return {**DEFAULTS_BEFORE_RECIPE, **values}


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings in a JSON config file (such as a run folder's ``config.json``)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise AbnetError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AbnetError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise AbnetError(f"config file {path} must hold a JSON object of settings")
    return values


def _has_type(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field annotation such as ``"int"`` or ``"str | None"``."""
    allowed = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),),
               "list[float]": (list,)}
    kinds = tuple(k for name in annotation.split(" | ") for k in allowed[name])
    if isinstance(value, list):
        return list in kinds and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
