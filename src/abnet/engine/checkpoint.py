"""Checkpoints that are safe to load and never half-written.

* ``last.pt``: the resumable training state (model, optimizer, epoch, RNG, metadata), read back
  with ``torch.load(weights_only=True)``, so a malicious pickle cannot run code.
* ``best.safetensors``: the best weights, with the metadata needed to rebuild the model
  (registry name and arguments, class names, input normalisation) as JSON in the header.

Both carry a :class:`~abnet.models.meta.CheckpointMeta` as plain data; ``save_pretrained`` folders
(:mod:`abnet.models.hub`) keep it in config.json. :func:`load_checkpoint` reads all of them, by any
name :func:`~abnet.models.locate.locate_checkpoint` resolves. Every file is written to a temporary
name in the same folder and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AbnetError, CheckpointError
from ..fileio import atomic_write
from ..models import create_model
from ..models.hub import describe
from ..models.locate import ACCEPTED, STATE_FILE, WEIGHTS_FILE, CheckpointFiles, locate_checkpoint
from ..models.meta import CheckpointMeta
from ..models.weights import META_KEY, read_state_dict, torch_load, write_safetensors

__all__ = ["STATE_FILE", "WEIGHTS_FILE", "CheckpointMeta", "from_pretrained", "load_checkpoint", "load_state",
           "model_meta", "read_checkpoint", "save_state", "save_weights"]


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a training state made of tensors, numbers, strings, lists and dicts."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``; a :class:`CheckpointError` for anything else."""
    path = _existing_file(path)
    state = torch_load(path)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise CheckpointError(f"{path} is a torch file but not an abnet checkpoint (no model and meta entries)")
    return state


def save_weights(path: str | Path, model: nn.Module, meta: CheckpointMeta | dict[str, Any]) -> None:
    """Atomically save the model's weights as safetensors with ``meta`` (checked, as JSON) in the header."""
    meta = CheckpointMeta.of(meta, "the metadata to save")
    write_safetensors(path, model, {META_KEY: json.dumps(meta.to_dict())})


def model_meta(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The metadata (plain data, for last.pt and best.safetensors) that rebuilds ``model`` (made by
    ``create_model``) and feeds it: ``extra`` gives the :class:`CheckpointMeta` fields (classes, mean, ...)."""
    return describe(model, **extra).to_dict()


def load_checkpoint(source: str | os.PathLike[str]) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint names, in eval mode, with its metadata (also kept as ``model.abnet_meta``).

    ``source``: a run folder, ``last.pt``, ``best.safetensors``, a ``save_pretrained`` or ``abnet convert``
    folder, ``owner/name`` in the local Hugging Face cache or a pretrained name (see
    :func:`~abnet.models.locate.locate_checkpoint`). Raises :class:`CheckpointError` with a one-line reason for
    a missing, empty, unreadable or foreign checkpoint and for weights that do not fit the model they name.
    """
    files = locate_checkpoint(source)
    weights, meta = read_checkpoint(files)
    model = _build(meta, files.weights)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{files.weights} does not fit model {meta.model_name!r}: {detail[:200]}") from None
    model.abnet_meta = meta
    return model.eval(), meta


def from_pretrained(source: str | os.PathLike[str]) -> nn.Module:
    """The model (eval mode) of a ``save_pretrained`` folder, or of anything else :func:`load_checkpoint` takes;
    its metadata is ``model.abnet_meta``. Never downloads: ``owner/name`` is read from the local cache only."""
    return load_checkpoint(source)[0]


def read_checkpoint(files: CheckpointFiles) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """The state dict and checked metadata of located checkpoint files (a folder's config.json, read by
    :func:`~abnet.models.weights.read_state_dict`, or the file's own metadata)."""
    weights, raw = read_state_dict(_existing_file(files.weights))
    if raw is None:
        raise CheckpointError(f"{files.weights} holds weights without abnet's metadata, so it does not say which "
                              "model it is; use abnet.create_model(NAME, num_classes=K, weights=FILE) or "
                              "`abnet convert FILE --model NAME --num-classes K --out DIR`")
    where = files.config.parent if files.config is not None else files.weights
    return weights, CheckpointMeta.from_dict(raw, str(where))


def _build(meta: CheckpointMeta, path: Path) -> nn.Module:
    try:
        return create_model(meta.model_name, **meta.build_config)
    except AbnetError as err:
        raise CheckpointError(f"{path} names a model abnet cannot build: {err}") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has model arguments abnet cannot use: {err}") from None


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass {ACCEPTED}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was not written completely")
    return path

