"""Attention maps laid over their images, and a grid of them as a PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from ..fileio import atomic_write
from ..metrics import upsample_maps


def overlay(images: Tensor, attention: Tensor, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """Blend maps into images: uint8 (N, 3, H, W) and (N, 1, h, w) in [0, 1] -> uint8 (N, H, W, 3).

    The map is resized to the image and coloured with a perceptually uniform colour map, so
    bright means high attention.
    """
    import matplotlib  # only here: importing abnet stays quick

    maps = upsample_maps(attention, tuple(images.shape[2:])).clamp(0, 1).numpy()
    colours = matplotlib.colormaps[cmap](maps)[..., :3]
    base = images.permute(0, 2, 3, 1).numpy() / 255.0
    return np.round(255 * ((1 - alpha) * base + alpha * colours)).astype(np.uint8)


def save_grid(
    path: str | Path,
    images: Tensor,
    maps: Tensor | Mapping[str, Tensor],
    captions: Sequence[str],
    correct: Sequence[bool] | None = None,
    columns: int = 4,
) -> None:
    """Write a PNG of cells, ``columns`` per row: each image, then its overlay for each map, with a caption
    (green if correct, red if not).

    maps: (N, 1, h, w) for one map per image, or label -> maps (N, 1, h, w) for several (methods, or the
    attributes of a multi-task ABN); labels head the overlays of the first row.
    """
    from matplotlib.figure import Figure

    maps = {"": maps} if isinstance(maps, Tensor) else dict(maps)
    pictures = [images.permute(0, 2, 3, 1).numpy(), *(overlay(images, m) for m in maps.values())]
    labels = ["", *maps]
    n, per_cell = len(images), len(pictures)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(columns * per_cell * 1.3, rows * 1.55), dpi=110)
    for i in range(rows * columns):
        for j, picture in enumerate(pictures):
            ax = fig.add_subplot(rows, per_cell * columns, per_cell * i + j + 1)
            ax.set_axis_off()
            if i >= n:
                continue
            ax.imshow(picture[i], interpolation="nearest")
            if j == 0:
                colour = "black" if correct is None else ("green" if correct[i] else "red")
                ax.set_title(captions[i], fontsize=7, color=colour, loc="left")
            elif i < columns and labels[j]:
                ax.set_title(labels[j], fontsize=7)
    fig.tight_layout(pad=0.3)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
