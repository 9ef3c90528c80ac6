import math

import pytest
import torch

from abnet.metrics import (
    curve_auc,
    deletion_insertion,
    deletion_insertion_curves,
    gaussian_blur,
    iou_at_threshold,
)


def _top_row_model(x: torch.Tensor) -> torch.Tensor:
    """A 'model' whose class-1 probability is the mean of channel 0's top row, clamped to [0, 1]."""
    p1 = x[:, 0, 0, :].mean(1).clamp(0, 1)
    return torch.stack([1 - p1, p1], 1)


# 2x2 maps: "perfect" ranks the top row first, "reversed" last.
PERFECT = torch.tensor([[[1.0, 0.9], [0.2, 0.1]]])
REVERSED = 1 - PERFECT


def _curves(attention, steps=4, **kwargs):
    images = torch.ones(1, 1, 2, 2)
    return deletion_insertion_curves(_top_row_model, images, attention, torch.tensor([1]), steps=steps, **kwargs)


def test_deletion_insertion_tiny_case_by_hand():
    deletion, insertion = _curves(PERFECT, insertion_baseline=0.0)
    assert deletion.tolist() == [[1.0, 0.5, 0.0, 0.0, 0.0]]
    assert insertion.tolist() == [[0.0, 0.5, 1.0, 1.0, 1.0]]
    deletion, insertion = _curves(REVERSED, insertion_baseline=0.0)
    assert deletion.tolist() == [[1.0, 1.0, 1.0, 0.5, 0.0]]
    assert insertion.tolist() == [[0.0, 0.0, 0.0, 0.5, 1.0]]
    # trapezoids over 4 steps of 1/4: perfect (0.25, 0.75), reversed (0.75, 0.25)
    images, targets = torch.ones(1, 1, 2, 2), torch.tensor([1])
    d, i = deletion_insertion(_top_row_model, images, PERFECT, targets, steps=4, insertion_baseline=0.0)
    assert d.tolist() == [0.25] and i.tolist() == [0.75]
    d, i = deletion_insertion(_top_row_model, images, REVERSED, targets, steps=4, insertion_baseline=0.0)
    assert d.tolist() == [0.75] and i.tolist() == [0.25]


def test_uneven_chunks_and_deletion_baseline():
    # 4 pixels in 3 steps: 0, 1, 2 (= 4 // 3 * 2 rounded down), 4 pixels removed
    deletion, _ = _curves(PERFECT, steps=3)
    assert deletion.tolist() == [[1.0, 0.5, 0.0, 0.0]]
    deletion, _ = _curves(PERFECT, deletion_baseline=0.5)  # removed pixels become 0.5, not 0
    assert deletion.tolist() == [[1.0, 0.75, 0.5, 0.5, 0.5]]


def test_ties_are_broken_in_pixel_order():
    flat = torch.zeros(1, 2, 2)  # all tied: row-major order, i.e. the top row first, as PERFECT
    assert [c.tolist() for c in _curves(flat)] == [c.tolist() for c in _curves(PERFECT)]
    tied = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # (0, 1) before (1, 0), then (0, 0) before (1, 1)
    deletion, _ = _curves(tied)
    assert deletion.tolist() == [[1.0, 0.5, 0.5, 0.0, 0.0]]


def test_default_insertion_starts_from_a_blurred_image():
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(gaussian_blur(flat), flat)  # replicated edges keep a constant image constant
    peak = torch.zeros(1, 1, 15, 15)
    peak[0, 0, 7, 7] = 1.0

    def centre(x):
        p = x[:, 0, 7, 7].clamp(0, 1)
        return torch.stack([1 - p, p], 1)

    attention = peak[:, 0].clone()
    _, insertion = deletion_insertion_curves(centre, peak, attention, torch.tensor([1]), steps=4)
    assert insertion[0, 0] < 0.02 and insertion[0, 1:].tolist() == [1.0] * 4


def _region_model(x: torch.Tensor) -> torch.Tensor:
    """Class-1 probability: a sigmoid of the mean of a fixed 6x6 region of the input (about 1.5 on the object)."""
    p1 = torch.sigmoid(8 * (x[:, :, 2:8, 4:10].mean((1, 2, 3)) - 1))
    return torch.stack([1 - p1, p1], 1)


def _region_case(n=3, size=16):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g) * 0.3
    images[:, :, 2:8, 4:10] += 1.5  # the object: what the model looks at
    perfect = torch.rand(n, 1, size // 2, size // 2, generator=g) * 0.1
    perfect[:, :, 1:4, 2:5] += 1.0  # half-resolution map, high on the region
    return images, perfect, torch.ones(n, dtype=torch.long)


def test_a_faithful_map_deletes_fast_and_inserts_fast():
    images, perfect, targets = _region_case()
    d_good, i_good = deletion_insertion(_region_model, images, perfect, targets)
    d_bad, i_bad = deletion_insertion(_region_model, images, 1 - perfect, targets)
    assert (d_good < d_bad - 0.3).all() and (i_good > i_bad + 0.3).all()
    for auc in (d_good, i_good, d_bad, i_bad):
        assert auc.shape == (3,) and ((auc >= 0) & (auc <= 1)).all()


def test_batching_does_not_change_results():
    images, perfect, targets = _region_case(n=3)
    calls = []

    def counting(x):
        calls.append(len(x))
        return _region_model(x)

    together = deletion_insertion_curves(counting, images, perfect, targets, steps=8, batch_size=5)
    assert max(calls) <= 5 and len(calls) == 2 * math.ceil(3 * 9 / 5)  # all images' steps share the chunks
    big = deletion_insertion_curves(_region_model, images, perfect, targets, steps=8, batch_size=1000)
    alone = [
        deletion_insertion_curves(_region_model, images[j : j + 1], perfect[j : j + 1], targets[j : j + 1], 8)
        for j in range(3)
    ]
    for which in range(2):
        assert torch.allclose(together[which], big[which])
        assert torch.allclose(together[which], torch.cat([a[which] for a in alone]))


def test_curve_auc_and_argument_checks():
    assert curve_auc(torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])).tolist() == [0.75, 1.0]
    images = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="maps must be"):
        deletion_insertion(_top_row_model, images, torch.zeros(1, 3, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match="predict must return"):
        deletion_insertion(lambda x: x.flatten(1)[:1], images, PERFECT, torch.tensor([1]))


def _masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, 4:, 2:6] = True
    return masks


def test_iou_perfect_disjoint_and_partial():
    masks = _masks()
    assert iou_at_threshold(masks.float().unsqueeze(1), masks).tolist() == [1.0, 1.0]
    assert iou_at_threshold((~masks).float().unsqueeze(1), masks).tolist() == [0.0, 0.0]
    half = torch.nn.functional.avg_pool2d(masks.float().unsqueeze(1), 2)  # (N, 1, 4, 4) upsampled to 8x8
    assert iou_at_threshold(half, masks).tolist() == [1.0, 1.0]
    wide = torch.zeros(1, 8, 8)
    wide[0, :4, :8] = 1.0  # 32 pixels selected, 16 of them on the object
    assert iou_at_threshold(wide, masks[:1]).tolist() == [0.5]


def test_iou_normalisation_threshold_and_empty_cases():
    masks = _masks()[:1]
    low = masks.float() * 0.2 + 0.2  # values 0.2 and 0.4: the object is relatively high
    assert iou_at_threshold(low, masks).tolist() == [1.0]
    assert iou_at_threshold(low, masks, normalize=False).tolist() == [0.0]  # nothing reaches 0.5
    assert iou_at_threshold(low, masks, threshold=0.3, normalize=False).tolist() == [1.0]
    constant = torch.full((1, 8, 8), 0.9)
    assert iou_at_threshold(constant, masks).tolist() == [0.0]  # a flat map selects nothing
    empty = torch.zeros(1, 8, 8, dtype=torch.bool)
    assert iou_at_threshold(constant, empty)[0].isnan()  # empty union: undefined
    assert iou_at_threshold(low, empty).tolist() == [0.0]
