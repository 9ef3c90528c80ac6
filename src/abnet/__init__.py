"""abnet: Attention Branch Networks for PyTorch.

One forward pass gives the prediction and an attention map of where the network looked; the map,
fed back into the network, makes it more accurate (Fukui et al., CVPR 2019).
"""

from . import explain  # callable: abnet.explain(model, images) (see abnet/explain/__init__.py)
from .explain import Explanation
from .models import (
    ABN,
    MASK_MODES,
    ABNOutput,
    BackboneSplit,
    Classifier,
    MultiTaskABN,
    UnknownModelError,
    abn_loss,
    balanced_pos_weight,
    create_model,
    list_models,
    register_pair,
    wrap,
)

__version__ = "0.1.0"

__all__ = [
    "ABN", "MASK_MODES", "ABNOutput", "BackboneSplit", "Classifier", "MultiTaskABN", "UnknownModelError",
    "Explanation", "abn_loss", "balanced_pos_weight", "create_model", "explain", "list_models", "register_pair",
    "wrap", "__version__",
]
