"""Model names -> builders, in the spirit of timm's ``create_model``.

A family registers a *split function* (which stages form the feature extractor, the perception
branch and the repeated attention stage); :func:`register_pair` turns it into a plain model
``name``, an ABN model ``name_abn`` and a multi-task ABN ``name_abn_mt`` (one attention map and one
binary output per task), so no family builds the attention branch itself.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import AbnetError
from .abn import ABN, BackboneSplit, Classifier
from .locate import pretrained_folder
from .multitask import MultiTaskABN
from .weights import ClassCountError, build_with_weights

SplitFn = Callable[..., BackboneSplit]


class UnknownModelError(AbnetError):
    """A model name that is not registered; the message suggests close names."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model besides how to build it.

    ``is_multitask``: a :class:`~abnet.models.multitask.MultiTaskABN`, whose ``num_classes`` is the
    number of binary tasks (attributes); ``is_abn`` is True for it too.
    """

    name: str
    builder: Callable[..., nn.Module]
    is_abn: bool
    input_size: tuple[int, int, int]
    is_multitask: bool = False


_REGISTRY: dict[str, ModelInfo] = {}
_PREFIXES: dict[str, Callable[[str], ModelInfo | None]] = {}


def register_pair(name: str, split_fn: SplitFn, input_size: tuple[int, int, int] = (3, 32, 32)) -> None:
    """Register ``name`` (plain), ``name_abn`` (ABN) and ``name_abn_mt`` (multi-task ABN) from one split function.

    ``split_fn(num_classes=..., attention=..., **family_kwargs)`` returns a :class:`BackboneSplit`.
    """

    def plain(num_classes: int = 10, **kwargs: Any) -> nn.Module:
        return Classifier(split_fn(num_classes=num_classes, attention=False, **kwargs))

    def abn(num_classes: int = 10, mask: str = "residual", map_kernel: int = 3, **kwargs: Any) -> nn.Module:
        split = split_fn(num_classes=num_classes, attention=True, **kwargs)
        return ABN(split, num_classes, mask=mask, map_kernel=map_kernel)

    def abn_mt(num_classes: int = 10, mask: str = "residual", map_kernel: int = 3, shared: bool = False,
               **kwargs: Any) -> nn.Module:
        return MultiTaskABN(split_fn, num_classes, shared=shared, mask=mask, map_kernel=map_kernel, **kwargs)

    family = {key: p.default for key, p in inspect.signature(split_fn).parameters.items()
              if p.default is not inspect.Parameter.empty}  # e.g. depth=28, widen=10 for wrn28_10
    for builder in (plain, abn, abn_mt):
        builder.family_defaults = family  # what a checkpoint that records no value was built with
    entries = ((name, plain, False, False), (f"{name}_abn", abn, True, False), (f"{name}_abn_mt", abn_mt, True, True))
    for key, *_ in entries:
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
    for key, builder, is_abn, is_multitask in entries:
        _REGISTRY[key] = ModelInfo(key, builder, is_abn, input_size, is_multitask)


def register_prefix(prefix: str, resolve: Callable[[str], ModelInfo | None]) -> None:
    """Names starting with ``prefix`` (e.g. ``"tv:"``) are resolved on demand by ``resolve(name)``, which
    returns a :class:`ModelInfo` or None for a name it does not know. Such names are not listed."""
    _PREFIXES[prefix] = resolve


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. ``"*abn*"``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an :class:`UnknownModelError` naming close matches if absent."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, resolve in _PREFIXES.items():
        if name.startswith(prefix):
            info = resolve(name)
            if info is not None:
                return info
            raise UnknownModelError(f"unknown model {name!r}: after {prefix!r} give a classification model that "
                                    f"library knows, optionally with _abn (e.g. {prefix}resnet50_abn)")
    close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `abnet models` or abnet.list_models()"
    raise UnknownModelError(f"unknown model {name!r}; {hint}")


def create_model(name: str, weights: str | os.PathLike[str] | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("resnet20_abn", num_classes=100, mask="residual")``.

    ``weights``: a file (or run folder) whose weights are loaded exactly after building: abnet's, the
    ABN research code's ``model_best.pth.tar``, or any state dict in either's names (a backbone's for
    ``tv:`` / ``timm:``); see :mod:`abnet.models.weights`. An abnet file also gives the arguments left out
    (mask, map_kernel, num_classes, family settings) and refuses those that differ from it. The name and the
    arguments are kept on the model as ``abnet_config`` so a checkpoint can rebuild it (without reading
    ``weights`` again). ``pretrained="cifar10"`` (a data set's name) loads the weights shipped in the package
    as ``name:cifar10`` (``abnet pretrained`` lists them); ``pretrained=True`` is a ``tv:`` / ``timm:`` model's
    own library weights.
    """
    builder = model_info(name).builder
    shipped = f"{name}:{kwargs.pop('pretrained')}" if isinstance(kwargs.get("pretrained"), str) else None
    if shipped is not None:
        if weights is not None:
            raise AbnetError("give weights= or pretrained=<data set>, not both")
        weights = pretrained_folder(shipped)  # unknown names and damaged files are refused here
    if weights is None:
        model = builder(**kwargs)
    else:
        try:
            model, kwargs = build_with_weights(builder, name, weights, **kwargs)
        except ClassCountError as err:
            if shipped is None:
                raise
            raise AbnetError(f"pretrained {shipped} classifies {err.held} classes, not num_classes={err.asked}; "
                             f"leave num_classes out, or train a model for {err.asked} classes (abnet train)") from None
    model.abnet_config = {"model": name, **kwargs}
    return model

