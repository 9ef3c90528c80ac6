"""Pieces that several backbone families share."""

from __future__ import annotations

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """The remaining stage(s), global average pooling and a linear classifier.

    Used as the perception branch of an ABN and as the head of the plain baseline. Pooling is
    adaptive, so any input size the stages accept works.
    """

    def __init__(self, stages: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(x)).flatten(1))


def init_weights(module: nn.Module) -> None:
    """He-normal convs (fan-out), unit-scale BN, as torchvision's ResNets; apply with ``Module.apply``."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
