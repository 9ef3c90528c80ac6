"""``model.save_pretrained(DIR)``: a model as a Hugging Face-style folder that ``abnet.from_pretrained`` reads.

DIR holds ``config.json`` (the model's :class:`~abnet.models.meta.CheckpointMeta`), ``model.safetensors``
(its weights) and ``README.md`` (a model card). Each file is written atomically, config.json last (an old one
is removed first when overwriting), so a folder without it was never completed; nothing is written when the
input is bad.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AbnetError
from ..fileio import write_text
from .locate import CONFIG_FILE, MODEL_FILE
from .meta import INITIAL_WEIGHTS, REQUIRED, CheckpointMeta
from .weights import write_safetensors

CARD_FILE = "README.md"
_CARD_CLASSES = 20  # class names listed in the card; config.json has all
_SETTINGS = {"epochs": "{} epochs", "batch_size": "batch size {}", "lr": "lr {}", "schedule": "{} schedule",
             "warmup_epochs": "{} warm-up epochs", "label_smoothing": "label smoothing {}",
             "weight_decay": "weight decay {}", "seed": "seed {}"}  # training settings the card names


class PretrainedMixin:
    """Gives the models ``create_model`` makes a ``save_pretrained`` method."""

    def save_pretrained(self, path: str | os.PathLike[str], meta: CheckpointMeta | None = None, *,
                        overwrite: bool = False, dtype: torch.dtype | None = None, **fields: Any) -> Path:
        """Write this model to folder ``path`` (new or empty unless ``overwrite``); returns the folder.

        The metadata is ``meta``, else what the model was loaded with (``load_checkpoint``,
        ``from_pretrained``), updated by ``fields`` (e.g. ``license="mit"``); a model built from scratch
        needs ``classes``, ``mean``, ``std`` and ``image_size``. ``dtype=torch.float16`` stores the floating
        weights in half the bytes; they load back into a float32 model.
        """
        return save_pretrained(self, path,  # type: ignore[arg-type]
                               meta or getattr(self, "abnet_meta", None), overwrite=overwrite, dtype=dtype, **fields)


def describe(model: nn.Module, base: CheckpointMeta | None = None, **fields: Any) -> CheckpointMeta:
    """The metadata of ``model`` (made by ``create_model``): ``base`` updated by ``fields``, with the model's own
    registry name and arguments (less those that fetched its initial weights: the checkpoint holds the weights)."""
    config = getattr(model, "abnet_config", None)
    if config is None:
        raise AbnetError("the model was not made by abnet.create_model; it has no abnet_config to save")
    raw = {**(base.to_dict() if base else {}), **fields,
           "model_config": {k: v for k, v in config.items() if k not in INITIAL_WEIGHTS}}
    missing = [name for name in REQUIRED if name not in raw]
    if missing:
        raise AbnetError(f"pass {', '.join(f'{name}=' for name in missing)} to say what the model reads and "
                         "predicts (a model from load_checkpoint or from_pretrained knows them)")
    return CheckpointMeta.from_dict(raw, "the model's metadata")


def save_pretrained(model: nn.Module, path: str | os.PathLike[str], meta: CheckpointMeta | None = None, *,
                    overwrite: bool = False, dtype: torch.dtype | None = None, **fields: Any) -> Path:
    """Write ``model`` as a ``save_pretrained`` folder; see :meth:`PretrainedMixin.save_pretrained`."""
    meta = describe(model, meta, **fields)
    folder = check_target(path, overwrite)
    card = model_card(model, meta, str(path))
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).unlink(missing_ok=True)  # written last: until then the folder reads as not completed
    try:
        write_safetensors(folder / MODEL_FILE, model, {"format": "pt"}, dtype)
        write_text(folder / CARD_FILE, card)
        write_text(folder / CONFIG_FILE, json.dumps(meta.to_dict(), indent=2) + "\n")
    except BaseException:
        if created:  # a failed write (disk full, Ctrl-C) leaves no folder behind that looks half-saved
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def check_target(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``path`` as a folder save_pretrained may write: new or empty, or anything with ``overwrite``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise AbnetError(f"{folder} is a file; save_pretrained writes a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise AbnetError(f"{folder} is not empty; pick a new folder or pass overwrite=True (abnet convert --force)")
    return folder


def model_card(model: nn.Module, meta: CheckpointMeta, where: str) -> str:
    """A README.md for the folder ``where``: what the model is, reads and predicts, how good it is and where it
    comes from, with a Hugging Face front matter."""
    is_abn = hasattr(model, "attention_branch")
    arguments = ", ".join(f"{k}={v!r}" for k, v in meta.build_config.items()) or "defaults"
    shown = ", ".join(meta.classes[:_CARD_CLASSES])
    hidden = len(meta.classes) - _CARD_CLASSES
    more = f" and {hidden} more (config.json lists all)" if hidden > 0 else ""
    kind = "binary attributes, one output each" if meta.multi_label else "classes"
    h, w = meta.image_size
    rows = {
        "Architecture": f"`{meta.model_name}` ({arguments}); {sum(p.numel() for p in model.parameters()):,} "
                        "parameters",
        "Outputs": f"{len(meta.classes)} {kind}: {shown}{more}",
        "Data": meta.data or "not recorded",
        "Input": f"{len(meta.mean)} x {h} x {w}, values in [0, 1] normalised with mean {_numbers(meta.mean)} and "
                 f"std {_numbers(meta.std)}",
        "Attention map": _map_size(model, meta) if is_abn else "none (a plain classifier, the ABN baseline)",
        "Accuracy": _accuracy(meta, is_abn, where),
        "Training": _training(meta),
        "Licence": meta.license or "not stated (set it with save_pretrained(..., license=...))",
    }
    what = ("An Attention Branch Network (Fukui et al., CVPR 2019): one forward pass gives the prediction of the "
            "perception branch, the attention branch's own prediction and the attention map the perception branch "
            "read." if is_abn else "A plain classifier made with abnet (the baseline of an Attention Branch "
            "Network).")
    usage = "model(x) gives .logits, .att_logits and .attention" if is_abn else "model(x) gives logits"
    data_flag = f" --data {meta.data}" if meta.data else " --data NAME"
    table = "\n".join(f"| {key} | {value} |" for key, value in rows.items())
    return f"""---
library_name: abnet
license: {meta.license or "unknown"}
tags:
- image-classification
- attention-branch-network
---

# {meta.model_name}{f" on {meta.data}" if meta.data else ""}

{what}

| | |
|---|---|
{table}

## Use

```python
import abnet
model = abnet.from_pretrained({where!r})  # {usage}
```

```
abnet eval {where}{data_flag}
abnet explain {where} IMAGE... --out explained/
```
"""


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _map_size(model: nn.Module, meta: CheckpointMeta) -> str:
    """The attention map's size for one input of the trained size (one forward pass, in eval mode)."""
    param = next(model.parameters())
    x = torch.zeros(1, len(meta.mean), *meta.image_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    try:
        with torch.no_grad():
            maps = model.eval()(x).attention
    finally:
        model.train(was_training)
    t, h, w = maps.shape[1:]
    per = f"{t} maps (one per attribute)" if t > 1 else "1 map"
    return f"{per} of {h} x {w} per image, values in [0, 1], for a {meta.image_size[0]} x {meta.image_size[1]} input"


def _accuracy(meta: CheckpointMeta, is_abn: bool, where: str) -> str:
    if meta.val_accuracy is None:
        return f"not measured with these weights yet: `abnet eval {where} --data NAME`"
    text = f"perception branch {meta.val_accuracy:.4f}"
    if is_abn:
        text += ", attention branch " + ("not recorded" if meta.val_att_accuracy is None
                                         else f"{meta.val_att_accuracy:.4f}")
    epoch = f", epoch {meta.epoch}" if meta.epoch is not None else ""
    return f"{text} (top-1 on the validation split{epoch})"


def _training(meta: CheckpointMeta) -> str:
    if meta.converted_from:
        return f"weights converted by `abnet convert` from `{meta.converted_from}`, trained by other code"
    settings = [text.format(meta.train_config[key]) for key, text in _SETTINGS.items() if key in meta.train_config]
    if not settings:
        return "not recorded"
    return "`abnet train`: " + ", ".join(settings) + "; all settings: train_config in config.json"
