"""Explanations: attention maps (ABN's own and Grad-CAM-family baselines), overlays, an HTML report,
and metrics of how well maps localise objects and how faithful they are.

``abnet.explain(model, images)`` is :func:`abnet.explain.methods.explain`: this package is callable,
so the function and the submodules (``abnet.explain.run``, ...) share the one name. The metrics
that score maps live in :mod:`abnet.metrics`, below the engine, which scores maps too.
"""

import sys
import types

from .methods import METHODS, Explanation, explain, minmax
from .overlay import overlay, save_grid

__all__ = ["METHODS", "Explanation", "explain", "minmax", "overlay", "save_grid"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> Explanation:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
