"""`shapes`: the embedded data set, generated on the fly, deterministic by seed.

Each image holds one *target* object whose shape is the class (circle, square, triangle, plus,
ring, star), at a random position, scale, rotation and colour, on a textured background (a
colour grating mixed with smooth noise) with distractors (line strokes and dots in random
colours, including the target's) that do not decide the class. The class is visible only
*somewhere* in the image, so a classifier has to find the object; each sample's ground-truth
object mask makes attention maps measurable.

`shapes-multi` (:func:`make_shapes_multi`) has binary attributes instead of one class: 1-3 objects
in named colours on a greyish background, one attribute per shape and per colour, each with its own
mask, to measure per-attribute attention maps.

`shapes-shortcut` (:func:`make_shapes_shortcut`) is `shapes` with a shortcut to learn instead of the object, for
studies of map guidance: a small square marker in a class colour. In training images it shows the image's class
(its colour, at its class's place near the border) with probability :data:`MARKER_SHARE`; in the others, and in
every val/test image, it shows a random class at a random place, so it says nothing there.

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
COLOURS = ("red", "green", "blue", "yellow")  # shapes-multi: the named object colours
ATTRIBUTES = CLASSES + COLOURS  # shapes-multi: one attribute per shape, then one per colour
SPLITS = ("train", "val", "test")
MAX_OBJECTS = 3  # shapes-multi: objects per image, 1 to MAX_OBJECTS
_COLOUR_RGB = torch.tensor([[0.90, 0.12, 0.12], [0.12, 0.72, 0.18], [0.15, 0.30, 0.95], [0.95, 0.85, 0.10]])
_SUPERSAMPLE = 2
_CHUNK = 1024  # images rendered at once, each chunk from its own seed
_MULTI_STREAM = 1 << 48  # shapes-multi seeds its chunks apart from shapes, so the backgrounds differ
_PLACES = 64  # shapes-multi: candidate positions tried per object
MARKER_SHARE = 0.9  # shapes-shortcut: share of training images whose marker shows their class
MARKER_RGB = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]],
                          dtype=torch.uint8)  # shapes-shortcut: the marker colour of each class, in CLASSES order


def make_shapes(n: int, size: int = 32, seed: int = 0, split: str = "train") -> ImageSet:
    """Generate ``n`` images of ``size`` x ``size`` pixels; the same (seed, split) gives the same set.

    Returns an :class:`ImageSet` with ``images`` (n, 3, size, size) uint8, ``labels`` (n,) int64 and
    ``masks`` (n, size, size) bool, the target object's pixels.
    """
    images, labels, masks = _generate(n, size, seed, split, _render)
    return ImageSet(images, labels, list(CLASSES), masks=masks)


def make_shapes_multi(n: int, size: int = 32, seed: int = 0, split: str = "train") -> ImageSet:
    """Generate ``n`` multi-attribute images (``shapes-multi``); the same (seed, split) gives the same set.

    Each image holds 1 to 3 objects: a random shape of :data:`CLASSES` in one of the named
    :data:`COLOURS` (jittered), at a random position, scale and rotation. Objects never overlap or
    touch (at least two pixels apart per 32), so each is wholly visible: 1, 2 or 3 objects are planned
    equally often, and one with no free place among 64 random tries is left out, so about 37 % of the
    images hold one object, 43 % two and 20 % three. The background and the distractor strokes are
    greyish (low saturation), so only the objects carry the named colours.

    Returns an :class:`ImageSet` whose ``classes`` are the T = 10 attribute names :data:`ATTRIBUTES`
    (one per shape: "has a circle", ...; one per colour: "has something red", ...), ``labels``
    (n, T) float32 0/1, and ``masks`` (n, T, size, size) bool: for attribute t, the pixels of the
    objects that make it true (all False where it is absent).
    """
    images, labels, masks = _generate(n, size, seed, split, _render_multi, stream=_MULTI_STREAM)
    return ImageSet(images, labels, list(ATTRIBUTES), masks=masks)


def make_shapes_shortcut(n: int, size: int = 32, seed: int = 0, split: str = "train") -> ImageSet:
    """Generate ``n`` images of ``shapes-shortcut``; the same (seed, split) gives the same set.

    The images are those of :func:`make_shapes` with the same arguments plus a marker, a square of
    :func:`marker_side` pixels in a class's :data:`MARKER_RGB` colour. In ``train``, with probability
    :data:`MARKER_SHARE` it is the image's class's colour at that class's place (:func:`marker_places`); otherwise,
    and in ``val``/``test`` always, the colour of a random class (any, the image's own included) at a random
    place. So the marker predicts the class in training only: a classifier that learnt it fails on the test
    split. ``masks`` are the object's pixels (not the marker, which is drawn over anything it covers).
    """
    images, labels, masks = _generate(n, size, seed, split, lambda k, s, gen: _render_shortcut(k, s, gen, split))
    return ImageSet(images, labels, list(CLASSES), masks=masks)


def marker_side(size: int) -> int:
    """shapes-shortcut: the side of the square marker in ``size`` x ``size`` images (4 pixels at 32)."""
    return max(3, size // 8)


def marker_places(size: int) -> Tensor:
    """shapes-shortcut: each class's marker place, (len(CLASSES), 2) (top, left) pixels near the border: the four
    corners, then the middles of the left and right sides."""
    m, inset = marker_side(size), max(1, size // 16)
    near, far, middle = inset, size - inset - m, (size - m) // 2
    return torch.tensor([[near, near], [near, far], [far, near], [far, far], [middle, near], [middle, far]])


def _render_shortcut(n: int, size: int, gen: torch.Generator, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """shapes, then a marker over it: its class's at its place in ``MARKER_SHARE`` of training images, else random."""
    images, labels, masks = _render(n, size, gen)
    m = marker_side(size)
    faithful = (torch.rand(n, generator=gen) < MARKER_SHARE) & (split == "train")
    shown = torch.where(faithful, labels, torch.randint(len(CLASSES), (n,), generator=gen))
    anywhere = torch.randint(size - m + 1, (n, 2), generator=gen)
    place = torch.where(faithful[:, None], marker_places(size)[labels], anywhere)
    pixels = torch.arange(size)
    rows = (pixels >= place[:, :1]) & (pixels < place[:, :1] + m)  # (n, size)
    cols = (pixels >= place[:, 1:]) & (pixels < place[:, 1:] + m)
    marker = rows[:, :, None] & cols[:, None, :]
    images = torch.where(marker[:, None], MARKER_RGB[shown].view(n, 3, 1, 1), images)
    return images, labels, masks & ~marker


def _generate(n: int, size: int, seed: int, split: str, render, stream: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Render ``n`` samples chunk by chunk, each chunk from its own seed (plus ``stream``, which keeps sets apart)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"shapes images need size >= 16 pixels, got {size}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    # Chunks are drawn whole from their own seeds, so a set of n is a prefix of the set of m > n.
    parts = []
    for chunk, start in enumerate(range(0, max(n, 1), _CHUNK)):
        gen = torch.Generator().manual_seed(_chunk_seed(seed, split, chunk) + stream)
        images, labels, masks = render(_CHUNK, size, gen)
        keep = min(_CHUNK, n - start)
        parts.append((images[:keep], labels[:keep], masks[:keep]))
    return tuple(torch.cat(p) for p in zip(*parts))


def _chunk_seed(seed: int, split: str, chunk: int) -> int:
    return (seed * len(SPLITS) + SPLITS.index(split)) * 1_000_003 + chunk


def _render(n: int, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    s, x, y = _coordinates(size)
    uniform = _uniform(gen)

    canvas = _background(n, s, size, x, y, uniform)
    # Distractors in random colours, including the target's, under the object.
    canvas = _distractors(canvas, x, y, size, uniform, lambda: uniform(n, 3))

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


def _render_multi(n: int, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """shapes-multi: greyish background and distractors, then 1-3 named-colour objects that do not overlap."""
    s, x, y = _coordinates(size)
    t, uniform = len(ATTRIBUTES), _uniform(gen)

    def grey() -> Tensor:  # distractor colours: greys with a faint tint, never a named colour
        return (uniform(n, 1) + uniform(n, 3, low=-0.04, high=0.04)).clamp(0, 1)

    canvas = _background(n, s, size, x, y, uniform, saturation=0.15)
    canvas = _distractors(canvas, x, y, size, uniform, grey)

    count = torch.randint(1, MAX_OBJECTS + 1, (n,), generator=gen)
    labels = torch.zeros(n, t, dtype=torch.bool)
    masks = torch.zeros(n, t, size, size, dtype=torch.bool)
    placed: list[tuple[Tensor, Tensor, Tensor]] = []  # (centre, reach, present) of earlier objects
    gap = 2 * size / 32
    for j in range(MAX_OBJECTS):
        shape = torch.randint(len(CLASSES), (n,), generator=gen)
        colour = torch.randint(len(COLOURS), (n,), generator=gen)
        radius = uniform(n, low=0.12, high=0.2) * size
        reach = 1.1 * radius  # square corners and star tips reach a little past the radius
        r3 = reach.view(n, 1, 1)
        candidates = r3 + 1 + uniform(n, _PLACES, 2) * (size - 2 * r3 - 2)  # (n, places, 2), inside the image
        free = torch.ones(n, _PLACES, dtype=torch.bool)
        for centre, other, present in placed:
            apart = (candidates - centre[:, None]).norm(dim=2) >= (other + reach + gap)[:, None]
            free &= apart | ~present[:, None]
        present = (count > j) & free.any(1)
        centre = candidates[torch.arange(n), free.int().argmax(1)]  # the first free candidate
        placed.append((centre, reach, present))
        theta = uniform(n, high=2 * math.pi)
        dx, dy = x - centre[:, 0].view(n, 1, 1), y - centre[:, 1].view(n, 1, 1)
        cos, sin, r = theta.cos().view(n, 1, 1), theta.sin().view(n, 1, 1), radius.view(n, 1, 1)
        inside = _inside(torch.where(present, shape, -1), (dx * cos + dy * sin) / r, (-dx * sin + dy * cos) / r)
        rgb = (_COLOUR_RGB[colour] + uniform(n, 3, low=-0.06, high=0.06)).clamp(0, 1)
        canvas = _paint(canvas, inside, rgb)
        pixels = F.avg_pool2d(inside.float().unsqueeze(1), _SUPERSAMPLE).squeeze(1) >= 0.5
        makes_true = (F.one_hot(shape, t) + F.one_hot(len(CLASSES) + colour, t)).bool() & present[:, None]
        labels |= makes_true
        masks |= makes_true[:, :, None, None] & pixels[:, None]

    image = F.avg_pool2d(canvas, _SUPERSAMPLE)
    image = image + 0.025 * torch.randn(image.shape, generator=gen)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), labels.float(), masks


def _coordinates(size: int) -> tuple[int, Tensor, Tensor]:
    """The super-sampled canvas side and its pixel-centre coordinates x (1, 1, s) and y (1, s, 1), in pixels."""
    s = size * _SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    return s, coords.view(1, 1, s), coords.view(1, s, 1)


def _uniform(gen: torch.Generator):
    """uniform(*shape, low, high): uniform draws from ``gen``."""

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen)

    return uniform


def _desaturate(colours: Tensor, keep: float) -> Tensor:
    """Pull colours (n, 3, ...) towards their grey levels, keeping ``keep`` of the saturation."""
    grey = colours.mean(1, keepdim=True)
    return grey + keep * (colours - grey)


def _background(n: int, s: int, size: int, x: Tensor, y: Tensor, uniform, saturation: float = 1.0) -> Tensor:
    """Two random colours mixed by a grating (random frequency, orientation, phase) and smooth noise; the
    colours keep ``saturation`` of their saturation (1: as drawn)."""
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
    if saturation < 1:
        c1, c2 = _desaturate(c1, saturation), _desaturate(c2, saturation)
    return c1 + (c2 - c1) * t


def _distractors(canvas: Tensor, x: Tensor, y: Tensor, size: int, uniform, colour) -> Tensor:
    """Up to four line strokes or dots per image, each painted in ``colour()`` ((n, 3) per call)."""
    n = canvas.shape[0]
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
        canvas = _paint(canvas, inside & present.view(n, 1, 1), colour())
    return canvas


def _segment_distance(x: Tensor, y: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
    """Distance of every pixel to the segment p0-p1 (a point when p0 == p1), shape (n, s, s)."""
    n = p0.shape[0]
    ax, ay = p0[:, 0].view(n, 1, 1), p0[:, 1].view(n, 1, 1)
    bx, by = p1[:, 0].view(n, 1, 1), p1[:, 1].view(n, 1, 1)
    vx, vy = bx - ax, by - ay
    t = (((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy).clamp_min(1e-6)).clamp(0, 1)
    return torch.hypot(x - ax - t * vx, y - ay - t * vy)


def _inside(labels: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Whether the object-frame point (u, v) (radius 1) lies inside each image's class shape (none for label -1).

    Each image's own shape only is tested: a loop over the classes, on the images of that class.
    """
    inside = torch.zeros(u.shape, dtype=torch.bool)
    for k, test in enumerate(_SHAPE_TESTS):
        index = (labels == k).nonzero().squeeze(1)
        if len(index):
            inside[index] = test(u[index], v[index])
    return inside


def _circle(u: Tensor, v: Tensor) -> Tensor:
    return torch.hypot(u, v) <= 1.0


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.78


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    sides = (math.pi / 2 + 2 * math.pi * k / 3 for k in range(3))
    return torch.stack([u * math.cos(a) + v * math.sin(a) for a in sides]).amax(0) <= 0.55


def _plus(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


def _ring(u: Tensor, v: Tensor) -> Tensor:
    rho = torch.hypot(u, v)
    return (rho <= 1.0) & (rho >= 0.55)


def _star(u: Tensor, v: Tensor) -> Tensor:
    tooth = ((torch.atan2(v, u) * 5 / (2 * math.pi)) % 1 - 0.5).abs() * 2  # 1 at a tip, 0 between tips
    return torch.hypot(u, v) <= 0.45 + 0.65 * tooth


_SHAPE_TESTS = (_circle, _square, _triangle, _plus, _ring, _star)  # in CLASSES order


def _contrasting_colour(canvas: Tensor, uniform, candidates: int = 8) -> Tensor:
    """For each image, the random colour (of a few candidates) farthest from its background's mean."""
    n = canvas.shape[0]
    mean = canvas.mean((2, 3))
    options = uniform(n, candidates, 3)
    best = (options - mean[:, None]).norm(dim=2).argmax(1)
    return options[torch.arange(n), best]


def _paint(canvas: Tensor, where: Tensor, colour: Tensor) -> Tensor:
    return torch.where(where.unsqueeze(1), colour.view(-1, 3, 1, 1), canvas)
