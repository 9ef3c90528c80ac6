"""Models to predict with: a checkpoint on PyTorch (its fast inference copy) or an exported ONNX file on
onnxruntime, behind one interface: uint8 images in, named output tensors out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..data.loader import normalize
from ..engine.device import resolve_device
from ..errors import AbnetError
from ..models import ABNOutput
from ..models.inference import inference_model
from ..models.meta import CheckpointMeta
from .info import ExportInfo, export_info


class Predictor(Protocol):
    """uint8 images (N, 3, H, W) at ``info.image_size`` -> ``{output name: float32 tensor on the CPU}``."""

    info: ExportInfo

    def __call__(self, images: Tensor) -> dict[str, Tensor]: ...


class TorchPredictor:
    """A model on PyTorch: abnet's inference copy (batch norm folded, channels_last, no autograd) on ``device``."""

    def __init__(self, model: nn.Module, meta: CheckpointMeta | Mapping[str, Any], device: str = "auto"):
        self.info = export_info(model, meta)
        self.device = resolve_device(device)
        self.model = inference_model(model).to(self.device)  # a copy: the caller's model stays where it is

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        x = normalize(images, self.info.mean, self.info.std).to(self.device)
        out = self.model(x)
        tensors = (out.logits, out.att_logits, out.attention) if isinstance(out, ABNOutput) else (out,)
        return {name: t.float().cpu() for name, t in zip(self.info.outputs, tensors)}


class OnnxPredictor:
    """An ONNX file exported by abnet, on onnxruntime; normalisation, classes and input size from its metadata."""

    def __init__(self, path: str | Path, device: str = "auto"):
        try:
            import onnxruntime
        except ImportError:
            raise AbnetError("predicting with an ONNX file needs onnxruntime: pip install 'abnet[onnx]'") from None
        providers = _providers(onnxruntime, device)
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable or invalid files
            raise AbnetError(f"{path} is not a readable ONNX file ({str(err).strip()[:160]})") from None
        self.info = ExportInfo.from_props(self.session.get_modelmeta().custom_metadata_map, str(path))
        names = [o.name for o in self.session.get_outputs()]
        if names != list(self.info.outputs):
            raise AbnetError(f"{path} has outputs {', '.join(names)} where its metadata names "
                             f"{', '.join(self.info.outputs)}; export it again with `abnet export`")

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        x = normalize(images, self.info.mean, self.info.std).numpy()
        got = self.session.run(None, {"images": x})
        return {name: torch.from_numpy(value) for name, value in zip(self.info.outputs, got)}


def _providers(onnxruntime: Any, device: str) -> list[Any]:
    """onnxruntime's execution providers for ``--device`` (auto, cpu, cuda or cuda:N), after
    :func:`~abnet.engine.device.resolve_device` has refused a GPU this machine lacks."""
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        if device == "auto":
            return ["CPUExecutionProvider"]
        raise AbnetError(f"--device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu), "
                         "or use --device cpu")
    return [("CUDAExecutionProvider", {"device_id": resolved.index or 0}), "CPUExecutionProvider"]


def load_predictor(source: str | Path, device: str = "auto") -> Predictor:
    """An ``.onnx`` file on onnxruntime, anything else as a checkpoint (see ``load_checkpoint``) on PyTorch.
    A device this machine lacks is refused before any file is read, as ``abnet eval`` does."""
    resolve_device(device)
    if Path(source).suffix.lower() == ".onnx":
        if not Path(source).is_file():
            raise AbnetError(f"{source} does not exist; give an ONNX file written by `abnet export`")
        return OnnxPredictor(source, device)
    from ..engine.checkpoint import load_checkpoint

    model, meta = load_checkpoint(source)
    return TorchPredictor(model, meta, device)
