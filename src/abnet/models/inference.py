"""A fast inference copy of a model: batch norm folded into the convs, channels_last, no autograd,
optionally compiled.

An ABN's prediction *and* its map come from one forward pass; this makes that pass as cheap as the
hardware allows, which is what ABN's argument against Grad-CAM (a backward pass per image) rests on.
The copy computes the same function as the eval-mode model, to float rounding.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse

from .abn import ABN, ABNOutput

log = logging.getLogger("abnet")


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every conv -> batch-norm pair folded into one conv.

    Traced with torch.fx (an ABN with its computed map, ``attention=None``). A model that cannot be
    traced is returned as an eval-mode copy, unfolded, with a log message: so far multi-task ABNs, whose
    task-in-batch reshapes depend on the batch size.
    """
    model = copy.deepcopy(model).eval()
    concrete = {"attention": None} if isinstance(model, ABN) else None
    try:
        traced = torch.fx.symbolic_trace(model, concrete_args=concrete)
    except Exception as err:  # fx cannot trace data-dependent Python control flow; keep the model as is
        log.info("inference: %s cannot be traced (%s); batch norm stays unfolded", type(model).__name__,
                 str(err).splitlines()[0][:120])
        return model
    return fuse(traced, inplace=True, no_trace=True)


class InferenceModel(nn.Module):
    """Calls the prepared copy in inference mode on a channels_last input; returns what the model returns
    (an :class:`ABNOutput` for an ABN, logits for a plain model)."""

    def __init__(self, module: nn.Module, channels_last: bool, compile: bool):
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self.compiled: Callable[[Tensor], ABNOutput | Tensor] | None = torch.compile(module) if compile else None

    def forward(self, x: Tensor) -> ABNOutput | Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.compiled is not None:
                try:
                    return self._run_compiled(x)
                except Exception as err:  # inductor fails in many ways (no C compiler, unsupported op, ...)
                    log.warning("inference: torch.compile failed (%s); running uncompiled",
                                str(err).splitlines()[0][:160])
                    self.compiled = None
            return self.module(x)

    def _run_compiled(self, x: Tensor) -> ABNOutput | Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):  # weights become constants of the compiled graph
            out = self.compiled(x)
        return ABNOutput(*out) if type(out) is tuple and len(out) == 3 else out


def inference_model(model: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                    compile: bool = False) -> InferenceModel:
    """A fast, eval-mode, gradient-free copy of ``model`` for prediction and attention maps.

    fold_bn: fold batch norm into the preceding convs (one conv instead of conv + BN).
    channels_last: the memory layout PyTorch's CPU convolutions run fastest in.
    compile: ``torch.compile`` the copy with inductor's freezing (weights as constants); the first call
    of each batch shape compiles (seconds), so it pays off over many batches. Falls back to the
    uncompiled copy, with a log message, where compiling fails.
    The original model is left untouched.
    """
    prepared = fold_batch_norm(model) if fold_bn else copy.deepcopy(model).eval()
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    for p in prepared.parameters():
        p.requires_grad_(False)
    return InferenceModel(prepared, channels_last, compile)
