"""Deployment: export a model with its attention map as an output (ONNX, TorchScript), and batch prediction
for pipelines (`abnet predict`) on PyTorch or onnxruntime."""

from .export import FORMATS, ExportError, export_model
from .info import ExportInfo
from .predict import PredictSummary, predict_files
from .runtime import OnnxPredictor, Predictor, TorchPredictor, load_predictor

__all__ = ["FORMATS", "ExportError", "export_model", "ExportInfo", "PredictSummary", "predict_files",
           "OnnxPredictor", "Predictor", "TorchPredictor", "load_predictor"]
