import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from abnet.data.base import ImageSet
from abnet.data.loader import InMemoryLoader, draw_crop_flip
from abnet.data.registry import SHAPES, DataOptions, data_spec, load_dataset, make_loader
from abnet.data.shapes import _COLOUR_RGB, ATTRIBUTES, CLASSES, COLOURS, make_shapes_multi
from abnet.engine.attributes import AttributeCounts, attribute_metrics, attribute_pointing_game
from abnet.engine.evaluate import evaluate
from abnet.models import ABNOutput

T = len(ATTRIBUTES)


@pytest.fixture(scope="module")
def multi():
    return make_shapes_multi(512, size=32, seed=0)


def test_deterministic_by_seed_and_split_and_prefix_stable():
    # At 16x16 (a fourth of the rendering time): every call renders a whole chunk of 1024 images.
    full = make_shapes_multi(300, size=16, seed=0)
    small = make_shapes_multi(40, size=16, seed=0)  # a second call: the same images, a prefix
    assert all(torch.equal(a[:40], b) for a, b in zip((full.images, full.labels, full.masks),
                                                      (small.images, small.labels, small.masks)))
    assert not torch.equal(make_shapes_multi(40, size=16, seed=1).images, small.images)
    assert not torch.equal(make_shapes_multi(40, size=16, seed=0, split="val").images, small.images)


def test_types_shapes_and_attribute_names(multi):
    assert T == len(CLASSES) + len(COLOURS) and multi.classes == list(ATTRIBUTES)
    assert multi.images.shape == (512, 3, 32, 32) and multi.images.dtype == torch.uint8
    assert multi.labels.shape == (512, T) and multi.labels.dtype == torch.float32
    assert set(multi.labels.unique().tolist()) == {0.0, 1.0}
    assert multi.masks.shape == (512, T, 32, 32) and multi.masks.dtype == torch.bool


def test_masks_are_empty_exactly_where_the_attribute_is_absent(multi):
    assert torch.equal(multi.masks.flatten(2).any(2), multi.labels.bool())
    shape_masks, colour_masks = multi.masks[:, :len(CLASSES)], multi.masks[:, len(CLASSES):]
    assert torch.equal(shape_masks.any(1), colour_masks.any(1))  # every object has one shape and one colour
    assert shape_masks.sum(1).max() == 1 and colour_masks.sum(1).max() == 1  # objects do not overlap
    objects = multi.labels[:, len(CLASSES):].sum(1)  # distinct colours: a lower bound on objects, >= 1
    assert objects.min() >= 1 and multi.labels[:, :len(CLASSES)].sum(1).max() <= 3


def test_colour_masks_lie_on_that_colour_and_the_background_is_greyish(multi):
    img = multi.images.float() / 255
    for c, rgb in enumerate(_COLOUR_RGB):
        m = multi.masks[:, len(CLASSES) + c].float().unsqueeze(1)
        interior = (-F.max_pool2d(-m, 3, 1, 1) > 0).squeeze(1)  # eroded: no anti-aliased edge pixels
        pixels = img.permute(0, 2, 3, 1)[interior]  # (P, 3)
        nearest = torch.cdist(pixels, _COLOUR_RGB).argmin(1)
        assert len(pixels) > 100 and (nearest == c).float().mean() > 0.99, COLOURS[c]
        assert (pixels - rgb).norm(dim=1).median() < 0.15
    objects = multi.masks.any(1, keepdim=True).float()
    away = (F.max_pool2d(objects, 3, 1, 1) == 0).squeeze(1)  # not on or next to an object
    rest = img.permute(0, 2, 3, 1)[away]
    saturation = rest.amax(1) - rest.amin(1)
    assert saturation.quantile(0.99) < 0.25  # named colours: > 0.6


def test_every_attribute_is_present_in_a_reasonable_share(multi):
    rates = multi.labels.mean(0)
    assert (rates > 0.15).all() and (rates < 0.6).all(), rates


def test_image_set_checks_attribute_mask_shapes(multi):
    with pytest.raises(ValueError, match="masks of shape"):
        ImageSet(multi.images[:4], multi.labels[:4].argmax(1), list(CLASSES), multi.masks[:4])  # (N,) labels
    with pytest.raises(ValueError, match="masks of shape"):
        ImageSet(multi.images[:4], multi.labels[:4], multi.classes, multi.masks[:4, :3])  # wrong T
    assert len(multi.subset(torch.arange(3)).masks) == 3


def test_crop_flip_moves_attribute_masks_with_images(multi):
    images, masks = multi.images[:64].clone(), multi.masks[:64]
    images[:, 0] = masks[:, 7].to(torch.uint8) * 255  # channel 0 draws the "green" mask
    crop = draw_crop_flip(len(images), *images.shape[2:], 4, torch.Generator().manual_seed(3))
    out, moved = crop(images), crop(masks)
    assert moved.shape == masks.shape and torch.equal(out[:, 0] == 255, moved[:, 7])
    assert not torch.equal(moved, masks)
    for t in (0, 9):  # each attribute's mask moves as a single (N, H, W) mask would
        assert torch.equal(crop(masks[:, t]), moved[:, t])


def test_training_loader_batches_carry_aligned_attribute_masks(multi):
    data = multi.subset(torch.arange(64))
    data.images[:, 0] = data.masks[:, 6].to(torch.uint8) * 255  # channel 0 draws the "red" mask
    batch = next(iter(InMemoryLoader(data, 32, (0.5,) * 3, (0.25,) * 3, train=True, seed=1).epoch()))
    assert batch.masks.shape == (32, T, 32, 32) and batch.labels.shape == (32, T)
    assert torch.equal(batch.images[:, 0] > 0, batch.masks[:, 6])


def test_registry_generates_shapes_multi_like_shapes():
    spec = data_spec("shapes-multi")
    assert not spec.needs_root and (spec.mean, spec.std) == (SHAPES.mean, SHAPES.std)
    data = load_dataset("shapes-multi", "val", limit=10, options=DataOptions(image_size=16))
    assert len(data) == 10 and data.image_size == (16, 16) and data.classes == list(ATTRIBUTES)
    assert data.masks.shape == (10, T, 16, 16)


def test_attribute_metrics_on_hand_made_predictions():
    targets = torch.tensor([[1, 0, 1, 1], [1, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.float32)
    predicted = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    logits = torch.where(predicted, 2.0, -2.0)
    counts = AttributeCounts(4)
    counts.add_predictions(logits[:3], targets[:3])  # two batches add up
    counts.add_predictions(logits[3:], targets[3:])
    m = attribute_metrics(counts, ["a", "none", "c", "all"])
    expected = {  # accuracy, balanced accuracy, positive rate
        "a": (0.75, (1 / 2 + 1) / 2, 0.5),
        "none": (0.75, 0.75, 0.0),  # no positives: the true-negative rate
        "c": (0.5, (2 / 3 + 0) / 2, 0.75),
        "all": (0.75, 0.75, 1.0),  # no negatives: the true-positive rate
    }
    for name, (acc, bal, rate) in expected.items():
        got = m["attributes"][name]
        assert got["accuracy"] == pytest.approx(acc) and got["balanced_accuracy"] == pytest.approx(bal)
        assert got["positive_rate"] == pytest.approx(rate) and "pointing_game" not in got
    assert m["mean_accuracy"] == pytest.approx(2.75 / 4)
    assert m["mean_balanced_accuracy"] == pytest.approx((0.75 + 0.75 + 1 / 3 + 0.75) / 4)
    assert "pointing_game" not in m
    with pytest.raises(ValueError, match="names"):
        attribute_metrics(counts, ["a"])


def _square_masks():
    """Two images, two attributes; attribute 1 is absent from image 1."""
    masks = torch.zeros(2, 2, 32, 32, dtype=torch.bool)
    masks[0, 0, 4:10, 4:10] = True
    masks[0, 1, 20:30, 16:28] = True
    masks[1, 0, 20:30, 16:28] = True
    return masks


def test_per_attribute_pointing_game():
    masks = _square_masks()
    perfect = F.avg_pool2d(masks.float(), 2)  # (2, 2, 16, 16): each attribute's map is its mask
    hits, images = attribute_pointing_game(perfect, masks)
    assert hits.tolist() == [2, 1] and images.tolist() == [2, 1]  # attribute 1 is played on image 0 only
    hits, _ = attribute_pointing_game(1 - perfect, masks)  # peaks off the objects
    assert hits.tolist() == [0, 0]
    shared = perfect[:, :1]  # one map for all attributes: attribute 0's
    hits, images = attribute_pointing_game(shared, masks)
    assert hits.tolist() == [2, 0] and images.tolist() == [2, 1]
    with pytest.raises(ValueError, match="maps must be"):
        attribute_pointing_game(perfect[:, :1].expand(2, 3, 16, 16), masks)

    counts = AttributeCounts(3)
    counts.add_predictions(torch.zeros(2, 3), torch.zeros(2, 3))
    three = torch.cat([masks, torch.zeros(2, 1, 32, 32, dtype=torch.bool)], 1)  # attribute 2: never present
    counts.add_pointing(torch.cat([perfect, torch.zeros(2, 1, 16, 16)], 1), three)
    m = attribute_metrics(counts, ["x", "y", "z"])
    assert [m["attributes"][k]["pointing_game"] for k in "xyz"] == [1.0, 1.0, None]
    assert m["pointing_game"] == 1.0


class _MapsFromImage(nn.Module):
    """Stub ABN whose T attention maps are its input's channels (or one map: their mean) and logits 0/1-ish."""

    def __init__(self, attributes: int, shared_map: bool = False):
        super().__init__()
        self.head = nn.Linear(3, attributes)
        self.shared_map = shared_map

    def forward(self, x: torch.Tensor) -> ABNOutput:
        logits = self.head(x.mean((2, 3)))
        maps = F.avg_pool2d(x, 2)[:, :logits.shape[1]]
        return ABNOutput(logits, logits, maps.mean(1, keepdim=True) if self.shared_map else maps)


def test_evaluate_reports_per_attribute_scores():
    # Three attributes whose masks are the image channels: the stub's maps point at them perfectly.
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(12, 3, 16, 16, dtype=torch.bool)
    for i in range(12):
        for t in range(3):
            if torch.rand(1, generator=gen) < 0.6:
                y, x = torch.randint(0, 12, (2,), generator=gen).tolist()
                masks[i, t, y:y + 4, x:x + 4] = True
    labels = masks.flatten(2).any(2).float()
    data = ImageSet(masks.to(torch.uint8) * 255, labels, ["p", "q", "r"], masks)
    result = evaluate(_MapsFromImage(3), make_loader(data, SHAPES, 5))
    assert set(result["attributes"]) == {"p", "q", "r"}
    for scores in result["attributes"].values():
        assert set(scores) == {"accuracy", "balanced_accuracy", "positive_rate", "pointing_game"}
        assert scores["pointing_game"] == 1.0
    assert result["pointing_game"] == 1.0 and 0 <= result["mean_balanced_accuracy"] <= 1
    mean_accuracy = sum(s["accuracy"] for s in result["attributes"].values()) / 3
    assert result["accuracy"] == pytest.approx(mean_accuracy) and result["n"] == 12
    json.dumps(result)

    real = load_dataset("shapes-multi", "val", limit=8, options=DataOptions(image_size=16))
    result = evaluate(_MapsFromImage(T, shared_map=True), make_loader(real, data_spec("shapes-multi"), 4))
    assert list(result["attributes"]) == list(ATTRIBUTES) and 0 <= result["pointing_game"] <= 1
    assert all("pointing_game" in s for s in result["attributes"].values())
    json.dumps(result)
