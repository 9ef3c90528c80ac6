import pytest
import torch
import torch.nn.functional as F

from abnet.data import make_shapes
from abnet.data.folder import FolderIndex
from abnet.data.loader import InMemoryLoader, cutout, draw_crop_flip
from abnet.data.registry import data_spec, load_dataset, make_loader
from abnet.errors import DataError


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(300, size=32, seed=0)


def test_shapes_is_deterministic_by_seed_and_split(shapes):
    again = make_shapes(300, size=32, seed=0)
    assert torch.equal(shapes.images, again.images) and torch.equal(shapes.labels, again.labels)
    assert torch.equal(shapes.masks, again.masks)
    assert not torch.equal(make_shapes(300, seed=1).images, shapes.images)
    assert not torch.equal(make_shapes(300, seed=0, split="val").images, shapes.images)


def test_a_smaller_set_is_a_prefix_of_a_larger_one(shapes):
    small = make_shapes(50, seed=0)
    assert torch.equal(small.images, shapes.images[:50]) and torch.equal(small.masks, shapes.masks[:50])


def test_shapes_types_shapes_and_classes(shapes):
    assert shapes.images.shape == (300, 3, 32, 32) and shapes.images.dtype == torch.uint8
    assert shapes.masks.shape == (300, 32, 32) and shapes.masks.dtype == torch.bool
    assert shapes.num_classes >= 6 and set(shapes.labels.tolist()) == set(range(shapes.num_classes))
    big = make_shapes(4, size=64)
    assert big.images.shape == (4, 3, 64, 64) and big.masks.shape == (4, 64, 64)


def test_masks_cover_the_objects(shapes):
    """Inside its mask an object is one colour (plus pixel noise); just outside, the colour changes."""
    m = shapes.masks.float().unsqueeze(1)
    interior = -F.max_pool2d(-m, 3, 1, 1) > 0  # eroded mask
    rim = (F.max_pool2d(m, 3, 1, 1) > 0) & (m == 0)  # one pixel outside
    img = shapes.images.float()
    area = shapes.masks.flatten(1).float().mean(1)
    assert (area > 0.02).all() and (area < 0.5).all()
    contrasts, spreads = [], []
    for i in range(len(img)):
        inside = img[i][:, interior[i, 0]]
        outside = img[i][:, rim[i, 0]]
        spreads.append(inside.std(1).max())
        contrasts.append((inside.mean(1) - outside.mean(1)).norm())
    assert torch.stack(spreads).median() < 10  # pixel noise is ~6 per channel
    assert torch.stack(contrasts).median() > 60


def test_crop_flip_matches_pad_and_slice():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = draw_crop_flip(16, 8, 8, 2, gen)(images)
    # Replay the same draws and build each crop by hand.
    gen = torch.Generator().manual_seed(0)
    oy = torch.randint(0, 5, (16, 1), generator=gen).flatten()
    ox = torch.randint(0, 5, (16, 1), generator=gen).flatten()
    flip = torch.rand(16, generator=gen) < 0.5
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        assert torch.equal(out[i], ref.flip(2) if flip[i] else ref)


def test_augmentation_keeps_masks_aligned(shapes):
    gen = torch.Generator().manual_seed(3)
    images = shapes.images.clone()
    images[:, 0] = shapes.masks.to(torch.uint8) * 255  # channel 0 draws the mask
    crop = draw_crop_flip(len(images), *images.shape[2:], 4, gen)
    out, masks = crop(images), crop(shapes.masks)
    assert torch.equal(out[:, 0] == 255, masks)
    assert not torch.equal(masks, shapes.masks)  # it did move them


def test_loader_batches_depend_only_on_seed_and_epoch(shapes):
    def batches(seed, epoch):
        loader = InMemoryLoader(shapes, 64, (0.5,) * 3, (0.25,) * 3, train=True, seed=seed)
        return [b.images for b in loader.epoch(epoch)], [b.labels for b in loader.epoch(epoch)]

    a_img, a_lab = batches(0, 1)
    b_img, b_lab = batches(0, 1)
    assert all(torch.equal(x, y) for x, y in zip(a_img + a_lab, b_img + b_lab))
    c_img, _ = batches(0, 2)
    assert not torch.equal(a_img[0], c_img[0])
    assert sum(len(lab) for lab in a_lab) == len(shapes)
    assert sorted(torch.cat(a_lab).tolist()) == sorted(shapes.labels.tolist())


def test_eval_loader_is_in_order_and_normalised(shapes):
    loader = InMemoryLoader(shapes, 128, (0.5,) * 3, (0.25,) * 3)
    batch = next(iter(loader.epoch()))
    torch.testing.assert_close(batch.images, (shapes.images[:128].float() / 255 - 0.5) / 0.25)
    assert len(loader) == 3


def test_registry_errors_name_the_problem():
    with pytest.raises(DataError, match="did you mean shapes"):
        load_dataset("shape")
    with pytest.raises(DataError, match="no split"):
        load_dataset("shapes", "extra")
    assert len(load_dataset("shapes", "val", limit=10)) == 10


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(64, 3, 32, 32)
    cutout(x, 8, torch.Generator().manual_seed(0))
    zeroed = (x == 0).all(1)  # (N, H, W): all channels cut together
    areas = zeroed.flatten(1).sum(1)
    assert areas.max() == 64 and areas.min() > 0  # a full 8x8 square, or a part of it at the border
    for img in zeroed:
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert img[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one solid rectangle
    assert ((x == 0) | (x == 1)).all()


def test_loader_applies_cutout_only_when_training(shapes):
    train = InMemoryLoader(shapes, 32, (0.5,) * 3, (0.25,) * 3, train=True, padding=0, flip=False, cutout_size=10)
    evaluation = InMemoryLoader(shapes, 32, (0.5,) * 3, (0.25,) * 3, cutout_size=10)
    assert ((next(iter(train.epoch())).images == 0).all(1).flatten(1).sum(1) > 0).all()
    torch.testing.assert_close(next(iter(evaluation.epoch())).images, InMemoryLoader(
        shapes, 32, (0.5,) * 3, (0.25,) * 3).epoch().__next__().images)


def test_make_loader_crop_padding_replaces_the_data_sets_shift(shapes):
    spec = data_spec("shapes")

    def first_batch(padding):
        return next(iter(make_loader(shapes, spec, 64, train=True, padding=padding).epoch())).images

    unshifted = InMemoryLoader(shapes, 64, spec.mean, spec.std, train=True, padding=0, flip=spec.flip)
    torch.testing.assert_close(first_batch(0), next(iter(unshifted.epoch())).images)
    assert spec.padding > 0 and not torch.equal(first_batch(None), first_batch(0))  # None: the data set's own


def test_crop_padding_for_image_files_is_a_clear_error(tmp_path):
    index = FolderIndex([tmp_path / "a.png"], torch.zeros(1, dtype=torch.long), ["0"], 16)
    with pytest.raises(DataError, match="--crop-padding applies to data sets held in memory"):
        make_loader(index, data_spec("imagefolder"), 8, train=True, padding=2)
