"""Weights files read safely and loaded exactly: ``create_model(name, weights=FILE)``.

A file is recognised by its content, never by its name: safetensors (abnet's ``best.safetensors``
with its JSON metadata, or any other), or a torch file read with ``torch.load(weights_only=True)``
(abnet's ``last.pt``, a plain state dict, or a training checkpoint with ``state_dict`` beside
``epoch`` / ``optimizer``, e.g. the ABN research code's). Folders and names (a run folder, a
``save_pretrained`` folder, a pretrained name) resolve as :func:`~abnet.models.locate.locate_checkpoint`
says. A pickle that would run code is refused before anything runs. The state dict then has to fit
the model key by key and shape by shape, in abnet's names or, translated by :mod:`abnet.models.research`,
in the research code's; anything else is refused in one line naming what the file holds and the first
mismatches. A file with abnet's metadata also says how its model was built (mask, map kernel, classes,
family settings): what the caller leaves out comes from it, what contradicts it is refused.
"""

from __future__ import annotations

import inspect
import json
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..fileio import atomic_write
from . import research
from .locate import locate_checkpoint
from .meta import INITIAL_WEIGHTS, CheckpointMeta

META_KEY = "abnet"  # the safetensors header entry holding abnet's metadata (JSON)

StateDict = dict[str, Tensor]


def read_state_dict(path: str | Path) -> tuple[StateDict, dict[str, Any] | None]:
    """The state dict in a weights file (or the folder or name ``locate_checkpoint`` resolves), and abnet's
    metadata (plain data) when there is some.

    Returns ``(state_dict, meta)``: ``meta`` is a ``save_pretrained`` folder's config.json, the ``meta``
    entry of a ``last.pt`` or the decoded ``abnet`` header entry of a safetensors file, else None. A
    DataParallel ``module.`` prefix is removed. Raises :class:`CheckpointError` (one line) for a missing,
    empty, truncated or foreign file and refuses a pickle that holds anything but tensors and plain data.
    """
    files = locate_checkpoint(path)
    path = _nonempty(files.weights)
    if _is_safetensors(path):
        state, meta = _read_safetensors(path)
    else:
        state, meta = _unwrap(torch_load(path), path)
    if files.config is not None:
        meta = _read_config(files.config)
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state, meta


def build_with_weights(build: Callable[..., nn.Module], name: str, path: str | Path,
                       **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``build(**kwargs)`` with the weights of ``path`` loaded exactly (what ``create_model(weights=)`` does);
    returns the model and the arguments it was built with.

    A file with abnet's metadata always holds the whole model and says how it was built: the arguments the
    caller left out are taken from it (so a ``mask="multiply"`` checkpoint computes its own logits), one that
    differs from it is refused, and the model keeps the metadata as ``abnet_meta``. A builder that takes
    ``weights`` itself (``tv:`` / ``timm:``) gets any other file as a plain state dict before it cuts its backbone.
    """
    state, raw = read_state_dict(path)
    meta = None if raw is None else CheckpointMeta.from_dict(raw, str(path))
    if meta is None and "weights" in _parameters(build):
        return build(weights=state, **kwargs), kwargs
    if meta is not None:
        if meta.model_name != name:
            raise CheckpointError(f"{path} holds abnet's {meta.model_name}, not {name}; use "
                                  f"create_model({meta.model_name!r}, ...) or a file of that model")
        kwargs = _recorded_arguments(build, meta, kwargs, path)
    model = build(**kwargs)
    classes = kwargs.get("num_classes", _defaults(build).get("num_classes"))
    holds = None if meta is None else f"abnet's {name} for {len(meta.classes)} classes"
    load_state_dict_exactly(model, state, f"{name} (num_classes={classes})", path, holds)
    if meta is not None:
        model.abnet_meta = meta
    return model, kwargs


def _recorded_arguments(build: Callable[..., nn.Module], meta: CheckpointMeta, given: dict[str, Any],
                        path: str | Path) -> dict[str, Any]:
    """``given`` completed by the architecture settings ``meta`` records; a one-line error for a given one that
    differs from what the file was built with (recorded, or the builder's default where nothing was recorded)."""
    recorded, defaults = meta.build_config, _defaults(build)
    for key, value in given.items():
        held = recorded.get(key, defaults.get(key, value))
        if key not in INITIAL_WEIGHTS and _stored(value) != _stored(held):
            message = (f"{path} holds {meta.model_name} built with {key}={held!r}, not {key}={value!r}; leave "
                       f"{key} out to build it as the file says, or pass a file built that way")
            raise ClassCountError(message, held, value) if key == "num_classes" else CheckpointError(message)
    return {**recorded, **given}


class ClassCountError(CheckpointError):
    """Weights for ``held`` classes where ``asked`` were asked for (callers such as ``abnet train`` rephrase it)."""

    def __init__(self, message: str, held: int, asked: int) -> None:
        super().__init__(message)
        self.held, self.asked = held, asked


def _stored(value: Any) -> Any:
    """``value`` as a checkpoint's JSON metadata holds it (tuples become lists)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def _defaults(build: Callable[..., nn.Module]) -> dict[str, Any]:
    """The default of each argument of ``build``, and of its family's (``family_defaults``, set by register_pair)."""
    own = {key: p.default for key, p in _parameters(build).items() if p.default is not inspect.Parameter.empty}
    return {**own, **getattr(build, "family_defaults", {})}


def write_safetensors(path: str | Path, model: nn.Module, metadata: dict[str, str],
                      dtype: torch.dtype | None = None) -> None:
    """Atomically write ``model``'s weights (detached, contiguous, on the CPU) as safetensors with ``metadata``
    (strings) in the header; ``dtype`` (e.g. float16, half the bytes) stores the floating tensors in that type,
    batch-norm statistics included, and leaves integer ones (``num_batches_tracked``) as they are."""
    from safetensors.torch import save_file

    def stored(value: Tensor) -> Tensor:
        value = value.detach().cpu()
        return (value.to(dtype) if dtype is not None and value.is_floating_point() else value).contiguous()

    tensors = {key: stored(value) for key, value in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state_dict_exactly(model: nn.Module, state: Mapping[str, Tensor], target: str, path: str | Path,
                            holds: str | None = None) -> None:
    """Load ``state`` (abnet's names or the research code's) into ``model``: all keys and shapes must match.

    Only ``num_batches_tracked`` may be absent (files from PyTorch < 0.4.1 lack it). ``target`` names the
    model and ``holds`` what the file holds, for the message; research-code files describe themselves.
    """
    ours = model.state_dict()
    hint = ""
    if not _fits_keys(state, ours):
        family = research.family_of(state)
        if family is not None:
            holds = research.describe(family, state)
            hint = research.hint(family, state)
            state = research.to_abnet(family, state, model, f"{path} holds {holds}")
    problems = _mismatches(state, ours)
    if problems:
        raise CheckpointError(f"{path} holds {holds or 'a state dict'}, which does not fit {target}: "
                              f"{'; '.join(problems)}{hint}")
    filled = {key: state.get(key, ours[key]) for key in ours}  # only num_batches_tracked can be absent here
    model.load_state_dict(filled, strict=True)


def _nonempty(path: Path) -> Path:
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes); it was not written completely")
    return path


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({type(err).__name__}); re-save the folder") from None
    return meta if isinstance(meta, dict) else None


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header size, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, Any] | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt: "
                              f"{str(err).splitlines()[0][:120]})") from None
    if META_KEY not in header:
        return state, None
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has unreadable abnet metadata in its header; re-save it with abnet") from None
    return state, meta if isinstance(meta, dict) else None


def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain data only; a one-line
    :class:`CheckpointError` for a pickle that carries code or a truncated, corrupt or foreign file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"{path} is not a readable torch file (truncated or corrupt); "
                                  "pass a state dict saved with torch.save or safetensors") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"refused to load {path}: it holds objects other than tensors and plain data{what}, "
                              "so loading it could run code; save the state dict alone (torch.save(model."
                              "state_dict()) or safetensors)") from None
    except Exception as err:  # zip, EOF and format errors of many kinds
        raise CheckpointError(f"{path} is not a readable torch or safetensors file ({type(err).__name__}: "
                              "truncated, corrupt or another format)") from None


def _unwrap(obj: Any, path: Path) -> tuple[StateDict, dict[str, Any] | None]:
    """The state dict inside what torch.load returned: abnet's last.pt, a training checkpoint or a bare state dict."""
    meta = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("meta"), dict):
        obj, meta = obj["model"], obj["meta"]  # abnet's last.pt
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint: epoch, best_acc, optimizer (and arch) beside it
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (a {type(obj).__name__}); pass a state dict, a training "
                              "checkpoint with a state_dict entry, or an abnet checkpoint")
    not_tensors = [key for key, value in obj.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path} holds a dict whose entries are not all tensors (e.g. {not_tensors[0]!r}); "
                              "pass a state dict, or a checkpoint with a state_dict entry")
    return dict(obj), meta


def _parameters(build: Callable[..., nn.Module]) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(build).parameters


def _fits_keys(state: Mapping[str, Tensor], ours: Mapping[str, Tensor]) -> bool:
    return not _missing(state, ours) and all(key in ours for key in state)


def _missing(state: Mapping[str, Tensor], ours: Mapping[str, Tensor]) -> list[str]:
    return [key for key in ours if key not in state and not key.endswith("num_batches_tracked")]


def _mismatches(state: Mapping[str, Tensor], ours: Mapping[str, Tensor]) -> list[str]:
    """The first missing keys, unexpected keys and shape mismatches, as short phrases (none: it fits)."""
    missing = _missing(state, ours)
    unexpected = [key for key in state if key not in ours]
    shapes = [f"{key} {tuple(state[key].shape)} vs {tuple(ours[key].shape)}"
              for key in ours if key in state and state[key].shape != ours[key].shape]
    return [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", shapes)) if keys]

