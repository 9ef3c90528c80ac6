"""Export a model to ONNX or TorchScript with its attention map as an output and its metadata inside.

Input ``images`` (N, 3, H, W), normalised as the metadata says, with a dynamic batch axis; outputs ``logits``,
``att_logits`` and ``attention`` (N, T, h, w) for an ABN, ``logits`` for a plain model.

ONNX goes through PyTorch's TorchScript-based exporter first: on abnet's zoo it exports in about a second where
the dynamo exporter takes 5-30 s, with the same outputs (to 1e-6). Where it lacks an operator (VGG's 7x7
adaptive pooling on inputs other than 224 x 224) the dynamo exporter (needs onnxscript) is used instead.
Every export is checked before it is written: the file's outputs for a batch of another size than the one it
was traced with must match the model's (to 1e-4 of each output's largest magnitude), so a graph that fixed the
batch size or lost a branch is refused.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.device import model_device
from ..errors import AbnetError
from ..fileio import atomic_write
from ..models import ABNOutput
from ..models.meta import CheckpointMeta
from .info import METADATA_FILE, ExportInfo, export_info

log = logging.getLogger("abnet")

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
TRACE_BATCH, CHECK_BATCH = 2, 1  # traced with a batch of 2, checked with 1: the batch axis must stay free
TOLERANCE = 1e-4  # largest difference, relative to an output's largest magnitude, that passes the check


class ExportError(AbnetError):
    """A model that cannot be exported, or an export whose outputs differ from the model's."""


class ExportedOutputs(nn.Module):
    """The model with plain tensor outputs in the exported order: (logits, att_logits, attention) or logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor] | Tensor:
        out = self.model(images)
        return (out.logits, out.att_logits, out.attention) if isinstance(out, ABNOutput) else out


def export_model(model: nn.Module, meta: CheckpointMeta | Mapping[str, Any], path: str | Path,
                 format: str = "onnx") -> ExportInfo:
    """Write ``model`` (with its checkpoint metadata ``meta``) to ``path`` as ``onnx`` or ``torchscript``.

    The file (and any missing folder above it) is written only after its outputs were checked against the
    model's, atomically; returns the metadata stored in it. Raises :class:`ExportError` (one line) for a model
    that cannot be exported and an :class:`~abnet.errors.AbnetError` for a missing package or an unknown format.
    """
    if format not in FORMATS:
        raise AbnetError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    info = export_info(model, meta)
    was_training = model.training
    wrapper = ExportedOutputs(model).eval()
    device = model_device(model)
    gen = torch.Generator().manual_seed(0)
    trace_input, check_input = (torch.randn(n, 3, *info.image_size, generator=gen).to(device)
                                for n in (TRACE_BATCH, CHECK_BATCH))
    try:
        with torch.no_grad():
            try:
                expected = _as_tuple(wrapper(check_input))
            except Exception as err:  # the model does not run on its own input size
                raise ExportError(f"cannot export {info.model}: it fails on a {tuple(check_input.shape)} input "
                                  f"({_first_line(err)})") from None
            if format == "onnx":
                _write_onnx(wrapper, info, trace_input, check_input, expected, Path(path))
            else:
                _write_torchscript(wrapper, info, trace_input, check_input, expected, Path(path))
    finally:
        model.train(was_training)
    return info


def _write_onnx(wrapper: nn.Module, info: ExportInfo, trace_input: Tensor, check_input: Tensor,
                expected: tuple[Tensor, ...], path: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise AbnetError("ONNX export needs the onnx package: pip install 'abnet[onnx]'") from None
    proto = _onnx_proto(wrapper, info, trace_input)
    for key, value in info.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        import onnxruntime
    except ImportError:
        log.info("export: onnxruntime is not installed; the ONNX file's outputs are not checked")
    else:
        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": check_input.cpu().numpy()})
        _check(info, expected, tuple(torch.from_numpy(g) for g in got), "ONNX")
    _save(path, lambda tmp: onnx.save_model(proto, tmp))


def _onnx_proto(wrapper: nn.Module, info: ExportInfo, trace_input: Tensor) -> Any:
    """The ONNX model: TorchScript-based exporter first (fast), the dynamo exporter where it fails."""
    import onnx

    names = {"input_names": ["images"], "output_names": list(info.outputs)}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), _native_stdout_silenced():
            warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic; the check below catches real ones
            torch.onnx.export(wrapper, (trace_input,), buffer, dynamo=False, verbose=False, opset_version=ONNX_OPSET,
                              dynamic_axes={n: {0: "batch"} for n in ("images", *info.outputs)}, **names)
        return onnx.load_model_from_string(buffer.getvalue())
    except Exception as legacy_err:  # an operator that exporter cannot express; try the other one
        log.info("export: the TorchScript-based ONNX exporter failed (%s); trying the dynamo exporter",
                 _first_line(legacy_err))
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise AbnetError(f"cannot export {info.model} with the TorchScript-based ONNX exporter "
                             f"({_first_line(legacy_err)}); the dynamo exporter needs onnxscript: "
                             "pip install 'abnet[onnx]'") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(wrapper, (trace_input,), dynamo=True, verbose=False, external_data=False,
                                            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, **names)
            proto = program.model_proto
        except Exception as err:
            raise ExportError(f"cannot export {info.model} to ONNX: {_first_line(legacy_err)}; the dynamo exporter: "
                              f"{_first_line(err)}") from None
        for value in (*proto.graph.input, *proto.graph.output):  # the dynamo exporter names the axis s0, s1, ...
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
        return proto


@contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """Send what C++ code writes to stdout to /dev/null: torch 2.14's TorchScript-based ONNX exporter turns its
    log on unconditionally and, when it fails, writes the whole graph there."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _write_torchscript(wrapper: nn.Module, info: ExportInfo, trace_input: Tensor, check_input: Tensor,
                       expected: tuple[Tensor, ...], path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice, tracer warnings (checked below)
            traced = torch.jit.trace(wrapper, trace_input, check_trace=False)
            got = _as_tuple(traced(check_input))
    except Exception as err:
        raise ExportError(f"cannot export {info.model} to TorchScript: {_first_line(err)}") from None
    _check(info, expected, got, "TorchScript")
    extra = {METADATA_FILE: _json(info)}

    def save(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, tmp, _extra_files=extra)

    _save(path, save)


def _save(path: Path, write: Callable[[str], None]) -> None:
    """Write the checked export atomically, creating the folders above it only now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def _json(info: ExportInfo) -> str:
    return json.dumps({k: json.loads(v) for k, v in info.to_props().items()})


def _check(info: ExportInfo, expected: tuple[Tensor, ...], got: tuple[Tensor, ...], what: str) -> None:
    """Refuse an export whose outputs, on a batch of another size than the traced one, differ from the model's."""
    if len(got) != len(expected):
        raise ExportError(f"the {what} export of {info.model} has {len(got)} outputs, the model {len(expected)}")
    for name, want, have in zip(info.outputs, expected, got):
        want, have = want.detach().float().cpu(), have.detach().float().cpu()
        if want.shape != have.shape:
            raise ExportError(f"the {what} export of {info.model} gives {name} of shape {tuple(have.shape)}, the "
                              f"model {tuple(want.shape)}: the trace fixed a size that should stay free")
        error = _relative_error(want, have)
        if not error <= TOLERANCE:
            raise ExportError(f"the {what} export of {info.model} differs from the model in {name} (relative error "
                              f"{error:.1e}); the model's forward depends on its input in a way a trace cannot keep")


def _relative_error(want: Tensor, have: Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    return float((want - have).abs().max() / want.abs().max().clamp_min(1e-12))


def _as_tuple(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__

