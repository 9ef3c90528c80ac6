"""Checkpoints that are safe to load and never half-written.

* ``last.pt``: the resumable training state (model, optimizer, epoch, RNG, metadata), read back
  with ``torch.load(weights_only=True)``, so a malicious pickle cannot run code.
* ``best.safetensors``: the best weights, with the metadata needed to rebuild the model
  (registry name and arguments, class names, input normalisation) as JSON in the header.

Every file is written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..errors import AbnetError, CheckpointError
from ..fileio import atomic_write
from ..models import create_model

WEIGHTS_FILE = "best.safetensors"
STATE_FILE = "last.pt"
_META_KEY = "abnet"


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a training state made of tensors, numbers, strings, lists and dicts."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``; a :class:`CheckpointError` for anything else."""
    path = _existing_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain data "
            "(loading it could run code); use a checkpoint written by abnet"
        ) from None
    except Exception as err:  # zip/EOF/format errors of many kinds
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}); "
                              "pass a last.pt or best.safetensors written by abnet") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise CheckpointError(f"{path} is a torch file but not an abnet checkpoint (no model and meta entries)")
    return state


def save_weights(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Atomically save the model's weights as safetensors with ``meta`` (JSON) in the header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {_META_KEY: json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def model_meta(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The metadata a checkpoint needs to rebuild ``model`` (made by ``create_model``), plus ``extra``."""
    config = getattr(model, "abnet_config", None)
    if config is None:
        raise ValueError("model was not made by abnet.create_model; it has no abnet_config to save")
    return {"model_config": config, **extra}


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (a ``.safetensors``, a ``last.pt`` or a run folder) in eval mode.

    Returns (model, meta). Raises :class:`CheckpointError` with a one-line reason for a missing,
    empty, unreadable or foreign file and for weights that do not fit the model they name.
    """
    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS_FILE, STATE_FILE):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a folder without {WEIGHTS_FILE} or {STATE_FILE}; pass a run folder "
                                  "or a checkpoint file")
    path = _existing_file(path)
    if _looks_like_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            weights = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None
        if _META_KEY not in header:
            raise CheckpointError(f"{path} is a safetensors file without abnet's metadata; "
                                  "it does not say which model it holds")
        meta = json.loads(header[_META_KEY])
    else:
        state = load_state(path)
        weights, meta = state["model"], state["meta"]
    model = _build(meta, path)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        name = meta["model_config"].get("model")
        raise CheckpointError(f"{path} does not fit model {name!r}: {detail[:200]}") from None
    return model.eval(), meta


def _build(meta: dict[str, Any], path: Path) -> nn.Module:
    config = dict(meta.get("model_config") or {})
    name = config.pop("model", None)
    for key in ("pretrained", "weights"):  # the checkpoint holds the weights; never fetch initial ones again
        config.pop(key, None)
    if not isinstance(name, str):
        raise CheckpointError(f"{path} does not name its model in its metadata")
    try:
        return create_model(name, **config)
    except AbnetError as err:
        raise CheckpointError(f"{path} names a model abnet cannot build: {err}") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has model arguments abnet cannot use: {err}") from None


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run folder, last.pt or best.safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was not written completely")
    return path


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header size, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"
