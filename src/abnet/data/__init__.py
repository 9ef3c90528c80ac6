"""Data: in-memory image sets, the embedded `shapes` generator and batched augmentation."""

from .base import ImageSet
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import make_shapes

__all__ = ["ImageSet", "SHAPES_CLASSES", "make_shapes"]
