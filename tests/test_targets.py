"""Target maps for map guidance: each source (masks, boxes:DIR, a DIR of maps) aligns with its images under the
loaders' augmentation, a share of the images is guided deterministically, bad targets stop with one line, and the
shapes-shortcut set carries its shortcut in training only."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from abnet.data import make_shapes
from abnet.data.base import ImageSet
from abnet.data.folder import FolderLoader, read_target, scan
from abnet.data.loader import Batch, InMemoryLoader, epoch_generator
from abnet.data.registry import DataOptions, load_dataset
from abnet.data.shapes import CLASSES, MARKER_RGB, make_shapes_multi, make_shapes_shortcut, marker_places, marker_side
from abnet.data.targets import attach_targets, target_file
from abnet.errors import DataError

ZERO_ONE = ((0.0,) * 3, (1.0,) * 3)  # normalisation that keeps x / 255, so channels compare with targets


def _channel_is_target(data: ImageSet) -> ImageSet:
    """Channel 0 of every image drawn from its target, so alignment can be checked after augmentation."""
    images = data.images.clone()
    images[:, 0] = data.targets if data.targets.dim() == 3 else data.targets[:, 0]
    return ImageSet(images, data.labels, data.classes, data.masks, data.targets, data.guided, data.paths)


def _assert_aligned(loader) -> list[Batch]:
    """Channel 0 still equals the target after the training augmentation, which did move the targets."""
    batches = list(loader.epoch(0))
    for b in batches:
        torch.testing.assert_close(b.images[:, 0], b.targets[:, 0], atol=1e-6, rtol=0)
    order = torch.randperm(len(loader.data), generator=epoch_generator(loader.seed, 0))
    unmoved = loader.data.targets[order].float() / 255
    assert not torch.equal(torch.cat([b.targets[:, 0] for b in batches]), unmoved)
    return batches


def test_masks_source_moves_with_crop_and_flip_and_slices_per_rank():
    data = _channel_is_target(attach_targets(make_shapes(64, size=16), "masks", "train"))
    assert data.targets.dtype == torch.uint8 and data.guided.all()
    assert torch.equal(data.targets, data.masks.to(torch.uint8) * 255)
    first = _assert_aligned(InMemoryLoader(data, 16, *ZERO_ONE, train=True, seed=1))
    assert first[0].targets.shape == (16, 1, 16, 16) and first[0].targets.dtype == torch.float32
    half = next(iter(InMemoryLoader(data, 16, *ZERO_ONE, train=True, seed=1, rank=1, world=2).epoch(0)))
    assert torch.equal(half.targets, first[0].targets[1::2]) and torch.equal(half.guided, first[0].guided[1::2])
    assert Batch(first[0].images, first[0].labels, None).targets is None  # old three-field construction


def test_masks_of_attributes_give_one_target_per_attribute():
    multi = attach_targets(make_shapes_multi(8, size=16), "masks", "train")
    assert multi.targets.shape == (8, 10, 16, 16)
    batch = next(iter(InMemoryLoader(multi, 8, *ZERO_ONE, train=True).epoch(0)))
    assert batch.targets.shape == (8, 10, 16, 16)


def test_masks_on_a_set_without_masks_is_one_line():
    plain = ImageSet(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), ["a"])
    with pytest.raises(DataError, match="need a data set with object masks"):
        attach_targets(plain, "masks", "train")


def test_a_fraction_guides_a_fixed_share_of_the_images():
    data = make_shapes(200, size=16)
    five = attach_targets(data, "masks", "train", fraction=0.05, seed=3)
    assert int(five.guided.sum()) == 10
    assert torch.equal(five.guided, attach_targets(data, "masks", "train", fraction=0.05, seed=3).guided)
    assert not torch.equal(five.guided, attach_targets(data, "masks", "train", fraction=0.05, seed=4).guided)
    one = attach_targets(data, "masks", "train", fraction=0.01, seed=3)
    assert int(one.guided.sum()) == 2 and (five.guided[one.guided]).all()  # a smaller share is inside a larger
    assert not five.targets[~five.guided].any()  # no target where there is no guidance
    assert int(attach_targets(data, "masks", "train", fraction=0.0).guided.sum()) == 0
    with pytest.raises(DataError, match="between 0 and 1"):
        attach_targets(data, "masks", "train", fraction=1.5)


def _image_folder(root, size=16, per_class=3, seed=0):
    """root/train/<a|b>/<stem>.png with random blocky images (and a val/ split, so train/ is all train); returns
    the training images as (path, red channel)."""
    rng = np.random.default_rng(seed)
    made = []
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        _saved(Image.fromarray(np.zeros((size, size, 3), np.uint8)), root / "val" / cls / "v.png")
        for k in range(per_class):
            blocks = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
            pixels = blocks.repeat(4, 0).repeat(4, 1)
            path = root / "train" / cls / f"{cls}{k}.png"
            Image.fromarray(pixels).save(path)
            made.append((path, pixels[:, :, 0]))
    return made


def _save_red_targets(made, images_root, targets_root, skip=()):
    for path, red in made:
        if path.stem in skip:
            continue
        out = targets_root / path.relative_to(images_root).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(red).save(out)


def test_dir_source_on_an_in_memory_folder_set(tmp_path, caplog):
    made = _image_folder(tmp_path / "img")
    _save_red_targets(made, tmp_path / "img", tmp_path / "maps", skip={"b2"})
    orphan = target_file(tmp_path / "maps", "train", "gone", "a")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(orphan)
    options = DataOptions(root=tmp_path / "img", image_size=16)
    data = load_dataset("imagefolder", "train", options=options)
    assert isinstance(data, ImageSet) and [p.stem for p in data.paths] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    with caplog.at_level(logging.WARNING, logger="abnet"):
        guided = attach_targets(data, str(tmp_path / "maps"), "train", options)
    warnings = [r.getMessage() for r in caplog.records if "target maps" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("1 target maps") and "gone.png" in warnings[0]
    assert guided.guided.tolist() == [True] * 5 + [False]
    assert torch.equal(guided.targets[:5], data.images[:5, 0]) and not guided.targets[5].any()
    _assert_aligned(InMemoryLoader(_channel_is_target(guided), 3, *ZERO_ONE, train=True, seed=2))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="abnet"):  # maps of images not loaded (a limit) are no orphans
        limited = attach_targets(load_dataset("imagefolder", "train", 2, options), str(tmp_path / "maps"), "train",
                                 options)
    assert len(limited) == 2 and [r.getMessage()[:14] for r in caplog.records] == ["1 target maps "]


def test_dir_source_of_attributes_reads_one_map_per_attribute(tmp_path):
    data = make_shapes_multi(4, size=16)
    circle, red = np.zeros((16, 16), np.uint8), np.zeros((32, 32), np.uint8)
    circle[:8], red[:, :16] = 255, 255
    _saved(Image.fromarray(circle), target_file(tmp_path, "val", "0", attribute="circle"))
    _saved(Image.fromarray(red), target_file(tmp_path, "val", "2", attribute="red"))
    guided = attach_targets(data, str(tmp_path), "val")
    assert guided.targets.shape == (4, 10, 16, 16) and guided.guided.tolist() == [True, False, True, False]
    c, r = data.classes.index("circle"), data.classes.index("red")
    assert torch.equal(guided.targets[0, c], torch.from_numpy(circle)) and (guided.targets[2, r, :, :7] == 255).all()
    assert guided.targets.flatten(2).any(2).sum() == 2  # no file, no target


def test_dir_targets_of_other_sizes_are_resized_to_their_images(tmp_path):
    wide = Image.fromarray(np.full((8, 8), 255, np.uint8))  # a square map of a 24 x 16 image: its centre square
    placed = np.asarray(read_target(_saved(wide, tmp_path / "sq.png"), 24, 16))
    assert placed.shape == (16, 24) and placed[:, 4:20].min() == 255 and placed[:, :4].max() == 0
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    made = _image_folder(tmp_path / "img", per_class=1)
    for path, _ in made:
        _saved(Image.fromarray(half), tmp_path / "maps" / path.relative_to(tmp_path / "img"))
    data = attach_targets(load_dataset("imagefolder", "train", options=DataOptions(root=tmp_path / "img",
                                                                                   image_size=16)),
                          str(tmp_path / "maps"), "train")
    assert (data.targets[:, :, :7] == 255).all() and (data.targets[:, :, 9:] == 0).all()


def _saved(img: Image.Image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def test_bad_dir_targets_are_one_line_errors(tmp_path):
    made = _image_folder(tmp_path / "img", per_class=1)
    options = DataOptions(root=tmp_path / "img", image_size=16)
    data = load_dataset("imagefolder", "train", options=options)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no target map .* for any of the 2 images"):
        attach_targets(data, str(tmp_path / "empty"), "train")
    with pytest.raises(DataError, match="is not a folder"):
        attach_targets(data, str(tmp_path / "nowhere"), "train")
    _save_red_targets(made, tmp_path / "img", tmp_path / "maps")
    (tmp_path / "maps" / "train" / "a" / "a0.png").write_bytes(b"this is no png")
    index = scan(tmp_path / "img" / "train", size=40)
    for loaded in (data, index):
        with pytest.raises(DataError, match="a0.png is not a readable image"):
            attach_targets(loaded, str(tmp_path / "maps"), "train")


def test_streamed_folder_crops_and_flips_targets_with_images(tmp_path):
    made = _image_folder(tmp_path / "img", size=32, per_class=4)
    _save_red_targets(made, tmp_path / "img", tmp_path / "maps", skip={"a3"})
    index = scan(tmp_path / "img" / "train", size=24)  # streamed: random resized crops and flips
    guided = attach_targets(index, str(tmp_path / "maps"), "train")
    assert guided.target_paths[3] == (None,) and guided.target_paths[0][0].name == "a0.png"
    plain = list(FolderLoader(index, 4, *ZERO_ONE, train=True, seed=5, workers=0).epoch(1))
    batches = list(FolderLoader(guided, 4, *ZERO_ONE, train=True, seed=5, workers=0).epoch(1))
    assert all(torch.equal(a.images, b.images) for a, b in zip(plain, batches))  # same draws with targets
    targets, guided_flags, reds = [], [], []
    for b in batches:
        assert b.targets.shape == (4, 1, 24, 24) and b.guided.dtype == torch.bool
        targets.append(b.targets[:, 0])
        guided_flags.append(b.guided)
        reds.append(b.images[:, 0])
    targets, guided_flags, reds = torch.cat(targets), torch.cat(guided_flags), torch.cat(reds)
    assert int(guided_flags.sum()) == 7 and not targets[~guided_flags].any()
    # Bilinear images, nearest-neighbour masks: equal up to block edges.
    close = ((targets - reds).abs() < 0.1)[guided_flags].float().mean()
    assert close > 0.8
    mismatched = ((targets - reds.roll(1, 0)).abs() < 0.1)[guided_flags].float().mean()
    assert mismatched < 0.3


def _voc(path, width, height, box):
    x0, y0, x1, y1 = box
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{width}</width><height>{height}</height></size><object><name>o</name>"
                    f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                    "</annotation>")


def test_boxes_source_in_memory_and_streamed(tmp_path):
    made = _image_folder(tmp_path / "img", size=32, per_class=2)
    for path, _ in made[:3]:
        _voc(tmp_path / "boxes" / path.parent.name / f"{path.stem}.xml", 32, 32, (1, 1, 16, 32))  # the left half
    _voc(tmp_path / "boxes" / "other.xml", 32, 32, (1, 1, 4, 4))  # of no image here: not reported
    source = f"boxes:{tmp_path / 'boxes'}"
    data = attach_targets(load_dataset("imagefolder", "train", options=DataOptions(root=tmp_path / "img",
                                                                                   image_size=16)), source, "train")
    assert data.guided.tolist() == [True, True, True, False]
    assert (data.targets[:3, :, :7] == 255).all() and not data.targets[:3, :, 9:].any() and not data.targets[3].any()
    index = attach_targets(scan(tmp_path / "img" / "train", size=24), source, "train")
    batch = next(iter(FolderLoader(index, 4, *ZERO_ONE, workers=0).epoch()))  # evaluation: resize, centre crop
    assert batch.guided.tolist() == [True, True, True, False]
    assert (batch.targets[:3, 0, :, :11] == 1).all() and not batch.targets[:3, 0, :, 13:].any()
    (tmp_path / "boxes" / "a" / "a0.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="a0.xml is not a readable Pascal VOC"):
        attach_targets(scan(tmp_path / "img" / "train", size=24), source, "train")


@pytest.fixture(scope="module")
def shortcut():
    return make_shapes_shortcut(600, size=16, seed=0), make_shapes_shortcut(600, size=16, seed=0, split="test")


def _marker_at_class_place(data: ImageSet) -> torch.Tensor:
    m, places = marker_side(16), marker_places(16)[data.labels]
    return torch.stack([(img[:, y:y + m, x:x + m] == MARKER_RGB[label].view(3, 1, 1)).all()
                        for img, (y, x), label in zip(data.images, places.tolist(), data.labels.tolist())])


def test_shapes_shortcut_marker_shows_the_class_in_training_only(shortcut):
    train, test = shortcut
    share = _marker_at_class_place(train).float().mean()
    assert 0.85 < share < 0.95
    assert _marker_at_class_place(test).float().mean() < 0.03
    m = marker_side(16)
    colours = (test.images.permute(0, 2, 3, 1).reshape(-1, 1, 3) == MARKER_RGB.view(1, -1, 3)).all(2)
    per_image = colours.view(600, 16 * 16, len(CLASSES)).sum(1) >= m * m  # a full marker of that colour
    assert (per_image.sum(1) >= 1).all()
    own = per_image[torch.arange(600), test.labels].float().mean()
    assert own < 0.35  # in test the colour is a random class's: about 1 / 6, not the image's own
    clean = make_shapes(600, size=16, seed=0)
    differ = (clean.images != train.images).any(1)
    assert torch.equal(clean.labels, train.labels) and (differ.flatten(1).sum(1) <= m * m).all()  # only the marker
    assert not (train.masks & differ).any() and torch.equal(train.masks, clean.masks & ~differ)


def test_shapes_shortcut_is_deterministic_and_registered(shortcut):
    again = make_shapes_shortcut(600, size=16, seed=0)
    assert torch.equal(again.images, shortcut[0].images) and torch.equal(again.masks, shortcut[0].masks)
    assert not torch.equal(make_shapes_shortcut(600, size=16, seed=1).images, again.images)
    val = load_dataset("shapes-shortcut", "val", limit=8, options=DataOptions(image_size=16))
    assert len(val) == 8 and val.masks is not None
    assert attach_targets(val, "masks", "val").guided.all()
