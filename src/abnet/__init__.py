"""abnet: Attention Branch Networks for PyTorch.

One forward pass gives the prediction and an attention map of where the network looked; the map,
fed back into the network, makes it more accurate (Fukui et al., CVPR 2019).

Its public names are imported on first use (PEP 562), so ``import abnet`` and ``abnet --help`` do not
pay for torch, the model zoo or the explainers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    **dict.fromkeys(
        ("ABN", "MASK_MODES", "ABNOutput", "BackboneSplit", "Classifier", "MultiTaskABN", "UnknownModelError",
         "abn_loss", "balanced_pos_weight", "create_model", "list_models", "register_pair", "wrap"),
        ".models",
    ),
    "Explanation": ".explain",
    "from_pretrained": ".engine.checkpoint",
}

__all__ = [*_LAZY, "explain", "__version__"]


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access."""
    if name == "explain":  # callable: abnet.explain(model, images) (see abnet/explain/__init__.py)
        return importlib.import_module(".explain", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
