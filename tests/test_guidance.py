"""Map guidance losses (abnet.engine.guidance): map_loss on attention maps, rrr_loss on input gradients."""

import pytest
import torch
import torch.nn.functional as F
from conftest import register_tiny_cnn
from torch import nn

import abnet
from abnet.engine.guidance import MAP_LOSSES, map_loss, rrr_loss

KINDS = [k for k in MAP_LOSSES if k != "rrr"]


def _square_targets(n: int = 2, size: int = 16) -> torch.Tensor:
    """(n, 1, size, size) 0/1 targets: a square on the 2-pixel grid, so it stays 0/1 at half the size."""
    t = torch.zeros(n, 1, size, size)
    t[:, :, 4:10, 2:12] = 1
    return t


def _departing(t: torch.Tensor, a: float) -> torch.Tensor:
    """The target at a = 0, its inverse at a = 1: a map that moves away from the target as a grows."""
    return (1 - a) * t + a * (1 - t)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_is_zero_at_the_target_and_grows_as_the_map_departs(kind):
    targets = _square_targets()
    at_map = F.avg_pool2d(targets, 2)  # the 8x8 map size
    guided = torch.ones(2, dtype=torch.bool)
    losses = [map_loss(_departing(at_map, a), targets, guided, kind).item() for a in (0, 0.1, 0.3, 0.5, 0.7, 1)]
    assert abs(losses[0]) < 1e-5
    assert all(b > a + 1e-4 for a, b in zip(losses, losses[1:])), losses


def test_energy_is_zero_whenever_all_the_mass_is_inside():
    targets = _square_targets()
    inside = 0.3 * F.avg_pool2d(targets, 2)
    guided = torch.ones(2, dtype=torch.bool)
    assert map_loss(inside, targets, guided, "energy").item() < 1e-5
    assert map_loss(inside, targets, guided, "l2").item() > 0.01  # l2 wants the map equal to the target


def test_bce_is_zero_for_a_map_equal_to_a_soft_target():
    targets = torch.rand(3, 1, 8, 8)
    assert abs(map_loss(targets.clone(), targets, torch.ones(3, dtype=torch.bool), "bce").item()) < 1e-5
    assert map_loss(1 - targets, targets, torch.ones(3, dtype=torch.bool), "bce").item() > 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_only_guided_images_count(kind):
    targets = _square_targets()
    maps = F.avg_pool2d(targets, 2)
    maps[1] = 1 - maps[1]  # image 0 looks at its target, image 1 away from it
    first, second, both = (map_loss(maps, targets, torch.tensor(g), kind)
                           for g in ([True, False], [False, True], [True, True]))
    assert abs(first.item()) < 1e-5 and second.item() > 0.1
    torch.testing.assert_close(both, second / 2)  # a mean over the guided images


@pytest.mark.parametrize("kind", KINDS)
def test_no_guided_image_gives_zero_and_still_back_propagates(kind):
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = map_loss(logits.sigmoid(), _square_targets(), torch.zeros(2, dtype=torch.bool), kind)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_targets_are_resized_to_the_map_by_area():
    """One white pixel in each 2x2 block is a quarter of each map pixel: area averaging makes it 0.25
    everywhere (nearest or bilinear sampling would not)."""
    targets = torch.zeros(1, 1, 16, 16)
    targets[:, :, ::2, ::2] = 1
    quarter = torch.full((1, 1, 8, 8), 0.25)
    assert map_loss(quarter, targets, torch.tensor([True]), "l2").item() < 1e-10
    assert map_loss(quarter, targets, torch.tensor([True]), "bce").item() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_one_target_serves_every_task_map(kind):
    targets = _square_targets()
    maps = torch.rand(2, 3, 8, 8)
    guided = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(map_loss(maps, targets, guided, kind),
                               map_loss(maps, targets.expand(2, 3, 16, 16), guided, kind))
    per_task = torch.stack([map_loss(maps[:, t:t + 1], targets, guided, kind) for t in range(3)])
    torch.testing.assert_close(map_loss(maps, targets, guided, kind), per_task.mean())


@pytest.mark.parametrize("kind, targets", [("l2", torch.zeros(2, 2, 16, 16)), ("l2", torch.zeros(2, 16, 16)),
                                           ("rrr", torch.zeros(2, 1, 16, 16)), ("dice", torch.zeros(2, 1, 16, 16))])
def test_wrong_targets_or_kind_are_refused(kind, targets):
    with pytest.raises(ValueError):
        map_loss(torch.rand(2, 3, 8, 8), targets, torch.ones(2, dtype=torch.bool), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_computed_in_float32_under_bf16_autocast(kind):
    targets = _square_targets()
    maps = torch.rand(2, 1, 8, 8)
    guided = torch.ones(2, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = map_loss(maps.bfloat16(), targets, guided, kind)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, map_loss(maps.bfloat16().float(), targets, guided, kind))


# --- Right for the Right Reasons -----------------------------------------------------------------------


class _Masked(nn.Module):
    """A linear classifier that reads only the pixels where ``mask`` is 1."""

    def __init__(self, mask: torch.Tensor, classes: int = 3):
        super().__init__()
        self.register_buffer("mask", mask)
        self.fc = nn.Linear(mask.numel() * 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x * self.mask).flatten(1))


def test_rrr_is_zero_when_the_gradients_lie_inside_the_target():
    torch.manual_seed(0)
    targets = _square_targets(4)
    model = _Masked(targets[0, 0])
    x, y, guided = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]), torch.ones(4, dtype=torch.bool)
    assert rrr_loss(model, x, y, targets, guided).item() == 0
    assert rrr_loss(model, x, y, 1 - targets, guided).item() > 0  # the same gradients, now all outside


def test_rrr_counts_only_guided_images_and_is_zero_without_any():
    torch.manual_seed(0)
    model = _Masked(torch.ones(16, 16))
    x, y, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), torch.zeros(2, 1, 16, 16)
    none = rrr_loss(model, x, y, targets, torch.zeros(2, dtype=torch.bool))
    assert none.item() == 0 and none.dtype == torch.float32
    first = rrr_loss(model, x, y, targets, torch.tensor([True, False]))
    both = rrr_loss(model, x, y, targets, torch.tensor([True, True]))
    second = rrr_loss(model, x, y, targets, torch.tensor([False, True]))
    assert first.item() > 0
    torch.testing.assert_close(both, (first + second) / 2)


def _outside_after_training(weight: float) -> tuple[float, float]:
    """A tiny plain CNN after 10 SGD steps on cross-entropy + weight * RRR (target: the left half):
    (input-gradient mass outside the target, its share of all the input-gradient mass)."""
    torch.manual_seed(0)
    model = abnet.create_model(register_tiny_cnn(), num_classes=3).train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    targets = torch.zeros(8, 1, 16, 16)
    targets[..., :8] = 1
    guided = torch.ones(8, dtype=torch.bool)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(10):
        optimizer.zero_grad()
        (F.cross_entropy(model(x), y) + weight * rrr_loss(model, x, y, targets, guided)).backward()
        optimizer.step()
    outside = rrr_loss(model, x, y, targets, guided).item()
    return outside, outside / rrr_loss(model, x, y, torch.zeros_like(targets), guided).item()


def test_rrr_trains_the_input_gradients_into_the_target():
    plain_mass, plain_share = _outside_after_training(0)
    mass, share = _outside_after_training(100)
    assert mass < 0.25 * plain_mass and share < 0.9 * plain_share, (plain_mass, mass, plain_share, share)


def test_rrr_on_an_abn_and_under_bf16_autocast():
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=3).train()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = rrr_loss(model, x, y, torch.zeros(2, 1, 16, 16), torch.ones(2, dtype=torch.bool))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.perception.fc.weight.grad.abs().sum() > 0
