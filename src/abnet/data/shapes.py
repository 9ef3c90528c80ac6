"""`shapes`: the embedded data set, generated on the fly, deterministic by seed.

Each image holds one *target* object whose shape is the class (circle, square, triangle, plus,
ring, star), at a random position, scale, rotation and colour, on a textured background (a
colour grating mixed with smooth noise) with distractors (line strokes and dots in random
colours, including the target's) that do not decide the class. The class is visible only
*somewhere* in the image, so a classifier has to find the object; each sample's ground-truth
object mask makes attention maps measurable.

Everything is drawn with vectorised torch ops on 2x super-sampled coordinates (anti-aliased
edges), a few seconds for 10,000 images of 32x32 on two cores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ImageSet

CLASSES = ("circle", "square", "triangle", "plus", "ring", "star")
SPLITS = ("train", "val", "test")
_SUPERSAMPLE = 2
_CHUNK = 1024  # images rendered at once, each chunk from its own seed


def make_shapes(n: int, size: int = 32, seed: int = 0, split: str = "train") -> ImageSet:
    """Generate ``n`` images of ``size`` x ``size`` pixels; the same (seed, split) gives the same set.

    Returns an :class:`ImageSet` with ``images`` (n, 3, size, size) uint8, ``labels`` (n,) int64 and
    ``masks`` (n, size, size) bool, the target object's pixels.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"shapes images need size >= 16 pixels, got {size}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    # Chunks are drawn whole from their own seeds, so make_shapes(n) is a prefix of make_shapes(m > n).
    parts = []
    for chunk, start in enumerate(range(0, max(n, 1), _CHUNK)):
        gen = torch.Generator().manual_seed(_chunk_seed(seed, split, chunk))
        images, labels, masks = _render(_CHUNK, size, gen)
        keep = min(_CHUNK, n - start)
        parts.append((images[:keep], labels[:keep], masks[:keep]))
    images, labels, masks = (torch.cat(p) for p in zip(*parts))
    return ImageSet(images, labels, list(CLASSES), masks=masks)


def _chunk_seed(seed: int, split: str, chunk: int) -> int:
    return (seed * len(SPLITS) + SPLITS.index(split)) * 1_000_003 + chunk


def _render(n: int, size: int, gen: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = size * _SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / _SUPERSAMPLE  # pixel units
    y, x = coords.view(1, s, 1), coords.view(1, 1, s)

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen)

    canvas = _background(n, s, size, x, y, uniform)
    # Distractors: up to four strokes or dots in random colours, under the object.
    for _ in range(4):
        present = uniform(n) < 0.8
        is_dot = uniform(n) < 0.35
        p0 = uniform(n, 2, high=size)
        angle = uniform(n, high=math.pi)
        length = uniform(n, low=0.3, high=0.55) * size
        p1 = p0 + length[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
        p1 = torch.where(is_dot[:, None], p0, p1)
        width = torch.where(is_dot, uniform(n, low=1.2, high=1.8), uniform(n, low=0.5, high=0.8)) * size / 32
        inside = _segment_distance(x, y, p0, p1) <= width.view(n, 1, 1)
        canvas = _paint(canvas, inside & present.view(n, 1, 1), uniform(n, 3))

    labels = torch.randint(len(CLASSES), (n,), generator=gen)
    radius = uniform(n, low=0.16, high=0.27) * size
    center = radius[:, None] + 1 + uniform(n, 2) * (size - 2 * radius[:, None] - 2)
    theta = uniform(n, high=2 * math.pi)
    dx, dy = x - center[:, 0].view(n, 1, 1), y - center[:, 1].view(n, 1, 1)
    cos, sin, r = theta.cos().view(n, 1, 1), theta.sin().view(n, 1, 1), radius.view(n, 1, 1)
    inside = _inside(labels, (dx * cos + dy * sin) / r, (-dx * sin + dy * cos) / r)
    canvas = _paint(canvas, inside, _contrasting_colour(canvas, uniform))

    image = F.avg_pool2d(canvas, _SUPERSAMPLE)
    mask = F.avg_pool2d(inside.float().unsqueeze(1), _SUPERSAMPLE).squeeze(1) >= 0.5
    image = image + 0.025 * torch.randn(image.shape, generator=gen)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), labels, mask


def _background(n: int, s: int, size: int, x: Tensor, y: Tensor, uniform) -> Tensor:
    """Two random colours mixed by a grating (random frequency, orientation, phase) and smooth noise."""
    angle = uniform(n, high=math.pi).view(n, 1, 1)
    freq = (uniform(n, low=0.15, high=0.6) * 32 / size).view(n, 1, 1)
    phase = uniform(n, high=2 * math.pi).view(n, 1, 1)
    grating = 0.5 + 0.5 * torch.sin(freq * (x * angle.cos() + y * angle.sin()) + phase)
    noise = F.interpolate(uniform(n, 1, 5, 5), size=(s, s), mode="bicubic", align_corners=False).squeeze(1)
    mix = uniform(n).view(n, 1, 1)
    t = (mix * grating + (1 - mix) * noise).clamp(0, 1).unsqueeze(1)
    c1, c2 = uniform(n, 3, 1, 1), uniform(n, 3, 1, 1)
    contrast = uniform(n, low=0.3, high=0.8).view(n, 1, 1, 1)
    c2 = c1 + contrast * (c2 - c1)
    return c1 + (c2 - c1) * t


def _segment_distance(x: Tensor, y: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
    """Distance of every pixel to the segment p0-p1 (a point when p0 == p1), shape (n, s, s)."""
    n = p0.shape[0]
    ax, ay = p0[:, 0].view(n, 1, 1), p0[:, 1].view(n, 1, 1)
    bx, by = p1[:, 0].view(n, 1, 1), p1[:, 1].view(n, 1, 1)
    vx, vy = bx - ax, by - ay
    t = (((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy).clamp_min(1e-6)).clamp(0, 1)
    return torch.hypot(x - ax - t * vx, y - ay - t * vy)


def _inside(labels: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Whether the object-frame point (u, v) (radius 1) lies inside each image's class shape."""
    rho, phi = torch.hypot(u, v), torch.atan2(v, u)
    au, av = u.abs(), v.abs()
    triangle = torch.stack(
        [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2 + 2 * math.pi * k / 3 for k in range(3))]
    ).amax(0) <= 0.55
    star_tooth = ((phi * 5 / (2 * math.pi)) % 1 - 0.5).abs() * 2  # 1 at a tip, 0 between tips
    shapes = torch.stack([
        rho <= 1.0,                                            # circle
        torch.maximum(au, av) <= 0.78,                         # square
        triangle,                                              # triangle
        ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),  # plus
        (rho <= 1.0) & (rho >= 0.55),                          # ring
        rho <= 0.45 + 0.65 * star_tooth,                       # star
    ], 1)
    return shapes.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *u.shape[1:])).squeeze(1)


def _contrasting_colour(canvas: Tensor, uniform, candidates: int = 8) -> Tensor:
    """For each image, the random colour (of a few candidates) farthest from its background's mean."""
    n = canvas.shape[0]
    mean = canvas.mean((2, 3))
    options = uniform(n, candidates, 3)
    best = (options - mean[:, None]).norm(dim=2).argmax(1)
    return options[torch.arange(n), best]


def _paint(canvas: Tensor, where: Tensor, colour: Tensor) -> Tensor:
    return torch.where(where.unsqueeze(1), colour.view(-1, 3, 1, 1), canvas)
