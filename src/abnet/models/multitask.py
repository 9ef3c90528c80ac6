"""The multi-task ABN (Fukui et al., CVPR 2019: CelebA's 40 binary attributes, one attention map each).

The attention branch ends in T channels, one per task (binary attribute): T attention logits and T
maps M_t. Task t's perception computation reads g(x) masked by its own M_t and gives task t's logit.

The T perception computations run as one batch. The T masked copies of g(x) are stacked along the
batch dimension, (N*T, C, h, w), row n*T + t being image n masked by M_t (the *task-in-batch*
layout), and

- ``shared=True``: one perception branch with T outputs reads all rows; task t's logit is output t
  of row n*T + t;
- ``shared=False``: T independent perception branches, fused by :func:`group_per_task` into one
  network of grouped layers, read them; row n*T + t goes through branch t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .abn import ABN, BackboneSplit, apply_mask

MATMUL_MAX_POSITIONS = 16  # output positions up to which a grouped conv runs as a batched matrix product


class _TaskMajor(nn.Module):
    """Runs ``layer``, a layer for T tasks' channels side by side (N, T*C, ...), on task-in-batch rows (N*T, C, ...)."""

    def __init__(self, layer: nn.Module, num_tasks: int, source_type: type[nn.Module]):
        super().__init__()
        self.layer = layer
        self.num_tasks = num_tasks
        self.source_type = source_type

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer(x.reshape(-1, self.num_tasks * x.shape[1], *x.shape[2:]))
        return y.reshape(-1, y.shape[1] // self.num_tasks, *y.shape[2:])


class GroupedConv2d(_TaskMajor):
    """T independent copies of a Conv2d as one convolution with T times the groups.

    An ungrouped, zero-padded conv with small outputs (at most :data:`MATMUL_MAX_POSITIONS` positions)
    runs as one batched matrix product over the T copies (unfold, then ``bmm``) instead: there, CPU
    grouped convolutions are slower than T separate ones and the product faster than both (2.5x for
    ResNet-18's last stage at 64x64 input, T=10); on larger maps (8x8, CIFAR ResNets' last stage)
    unfolding costs more than it saves (2.7x slower) and the grouped convolution is used.
    """

    def __init__(self, conv: nn.Conv2d, num_tasks: int):
        t = num_tasks
        layer = nn.Conv2d(t * conv.in_channels, t * conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, t * conv.groups, conv.bias is not None, conv.padding_mode,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        super().__init__(layer, num_tasks, nn.Conv2d)
        self.as_matmul = conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)

    def forward(self, x: Tensor) -> Tensor:
        conv, t = self.layer, self.num_tasks
        n, h, w = x.shape[0] // t, x.shape[2], x.shape[3]
        out_h = (h + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
        out_w = (w + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
        if not self.as_matmul or out_h * out_w > MATMUL_MAX_POSITIONS:
            return super().forward(x)
        cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (N*T, C*k*k, L)
        cols = cols.view(n, t, -1, out_h * out_w).permute(1, 2, 0, 3).reshape(t, -1, n * out_h * out_w)
        y = torch.bmm(conv.weight.reshape(t, conv.out_channels // t, -1), cols)  # (T, out, N*L)
        if conv.bias is not None:
            y = y + conv.bias.view(t, -1, 1)
        return y.view(t, -1, n, out_h, out_w).permute(2, 0, 1, 3, 4).reshape(n * t, -1, out_h, out_w)


class GroupedBatchNorm2d(_TaskMajor):
    """T independent copies of a BatchNorm2d (statistics per task) as one BatchNorm2d over T times the channels."""

    def __init__(self, bn: nn.BatchNorm2d, num_tasks: int):
        like = bn.running_mean if bn.running_mean is not None else bn.weight
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        layer = nn.BatchNorm2d(num_tasks * bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                               **factory)
        super().__init__(layer, num_tasks, nn.BatchNorm2d)


class GroupedLinear(nn.Module):
    """T independent copies of a Linear on task-in-batch rows: (N*T, ..., in) -> (N*T, ..., out).

    ``weight`` (T*out, in) and ``bias`` (T*out,) hold the copies' tensors one after the other.
    """

    def __init__(self, linear: nn.Linear, num_tasks: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.source_type = nn.Linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.weight = nn.Parameter(torch.empty(num_tasks * linear.out_features, linear.in_features, **factory))
        self.bias = None if linear.bias is None else nn.Parameter(torch.empty(num_tasks * linear.out_features,
                                                                              **factory))

    def forward(self, x: Tensor) -> Tensor:
        t, inner = self.num_tasks, x.shape[1:-1]
        rows = x.reshape(-1, t, inner.numel(), self.in_features)  # (N, T, positions, in)
        y = torch.einsum("ntmi,toi->ntmo", rows, self.weight.view(t, self.out_features, self.in_features))
        if self.bias is not None:
            y = y + self.bias.view(t, 1, self.out_features)
        return y.reshape(-1, *inner, self.out_features)


_GROUPED: dict[type[nn.Module], Callable[[Any, int], nn.Module]] = {
    nn.Conv2d: GroupedConv2d,
    nn.BatchNorm2d: GroupedBatchNorm2d,
    nn.Linear: GroupedLinear,
}


def group_per_task(make: Callable[[int], nn.Module], num_tasks: int) -> nn.Module:
    """Fuse T independent copies of a network, ``make(t)`` for t < T, into one network that runs all T at once.

    The fused network takes task-in-batch rows: row n*T + t of its input is copy t's input for sample n,
    and row n*T + t of its output is what copy t gives for it. Every Conv2d, BatchNorm2d and Linear
    becomes a grouped layer holding the T copies' tensors (a grouped convolution, a BatchNorm over T times
    the channels, a batched matrix product), so one call does the work of T; task t's weights are copy
    t's, each initialised as ``make`` initialises it. Everything else (activations, pools, flatten,
    dropout, containers, and what a forward does with tensors itself: residual adds, concatenation) is
    kept, as it treats rows alike; a module of another type with parameters or buffers of its own
    raises a ValueError. The network ``make(0)`` returns becomes the fused one (its layers are replaced).
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
    fused = make(0)
    grouped: dict[int, nn.Module] = {}
    places: list[tuple[str, nn.Module]] = []
    for name, module in fused.named_modules(remove_duplicate=False):
        if type(module) in _GROUPED:
            if id(module) not in grouped:
                grouped[id(module)] = _GROUPED[type(module)](module, num_tasks)
                _load_task(grouped[id(module)], 0, module)
            places.append((name, grouped[id(module)]))
        elif [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            raise ValueError(
                f"cannot give each task its own copy of {type(module).__name__} (at {name or 'the top'}): only "
                f"{', '.join(t.__name__ for t in _GROUPED)} layers and parameter-free modules can be grouped per "
                "task; use shared=True (one perception branch for all tasks)"
            )
    for task in range(1, num_tasks):
        copy = make(task)
        for name, layer in places:
            _load_task(layer, task, copy.get_submodule(name))
    if places and places[0][0] == "":
        return places[0][1]
    for name, layer in places:
        fused.set_submodule(name, layer)
    return fused


def _load_task(layer: nn.Module, task: int, source: nn.Module) -> None:
    """Copy ``source``'s parameters and buffers into task ``task``'s slice of the grouped ``layer``."""
    if type(source) is not layer.source_type:
        raise ValueError(f"the copies differ: {type(source).__name__} where task 0 has {layer.source_type.__name__}")
    target = layer.layer if isinstance(layer, _TaskMajor) else layer
    theirs = dict(source.named_parameters()) | dict(source.named_buffers())
    ours = dict(target.named_parameters()) | dict(target.named_buffers())
    with torch.no_grad():
        for key, tensor in ours.items():
            src = theirs.get(key)
            if tensor.dim() == 0:  # BatchNorm's num_batches_tracked: task 0's
                if task == 0:
                    tensor.copy_(src)
            elif src is None or tensor.shape != (layer.num_tasks * src.shape[0], *src.shape[1:]):
                raise ValueError(f"the copies differ: task {task}'s {type(source).__name__} has another {key} than "
                                 "task 0's")
            else:
                tensor.view(layer.num_tasks, *src.shape)[task].copy_(src)


class MultiTaskABN(ABN):
    """An ABN for T binary tasks (e.g. attributes), with one attention map and one perception computation per task.

    ``model(x)`` returns an :class:`~abnet.models.abn.ABNOutput` of perception logits (N, T), attention
    logits (N, T) and maps (N, T, h, w); ``model(x, attention=M)`` reads the given maps M instead
    (shape (N, T, h, w), or anything that broadcasts to it). ``split_fn(num_classes=..., attention=...,
    **family_kwargs)`` is a family's split function. ``shared=False`` gives each task its own perception
    branch (T times the parameters, run as one grouped network, see :func:`group_per_task`);
    ``shared=True`` one branch with T outputs for all tasks. The parts are the attributes ``features``,
    ``attention_branch`` and ``perception`` (hook points), as in :class:`~abnet.models.abn.ABN`.
    """

    def __init__(self, split_fn: Callable[..., BackboneSplit], num_tasks: int, shared: bool = False,
                 mask: str = "residual", map_kernel: int = 3, **family_kwargs: Any):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        split = split_fn(num_classes=num_tasks if shared else 1, attention=True, **family_kwargs)
        super().__init__(split, num_tasks, mask, map_kernel, num_maps=num_tasks)
        self.num_tasks = num_tasks
        self.shared = shared
        if not shared:
            def make(task: int) -> nn.Module:
                if task == 0:
                    return split.perception
                return split_fn(num_classes=1, attention=False, **family_kwargs).perception

            self.perception = group_per_task(make, num_tasks)

    def _perceive(self, g: Tensor, attention: Tensor) -> Tensor:
        """Task t's logit from g masked by M_t, all tasks in one batch (task-in-batch rows)."""
        n, t = attention.shape[:2]
        masked = apply_mask(g.unsqueeze(1), attention.unsqueeze(2), self.mask)  # (N, T, C, h, w); T = 1 for "none"
        out = self.perception(masked.expand(n, t, *g.shape[1:]).reshape(n * t, *g.shape[1:]))
        return out.reshape(n, t, t).diagonal(dim1=1, dim2=2) if self.shared else out.reshape(n, t)
