import numpy as np
import torch

from abnet.explain.overlay import overlay, save_grid
from abnet.metrics import energy_in_mask, pointing_game


def _square_masks():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:10, 4:10] = True
    masks[1, 20:30, 16:28] = True
    return masks


def test_pointing_game_perfect_and_reversed_maps():
    masks = _square_masks()
    perfect = torch.nn.functional.avg_pool2d(masks.float().unsqueeze(1), 2)  # 16x16 map of the mask
    assert pointing_game(perfect, masks).tolist() == [True, True]
    assert pointing_game(1 - perfect, masks).tolist() == [False, False]
    assert energy_in_mask(perfect, masks).min() > 0.8
    assert energy_in_mask(1 - perfect, masks).max() < 0.1


def test_pointing_game_tolerance():
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 10, 10] = True
    near = torch.zeros(1, 1, 32, 32)
    near[0, 0, 10, 12] = 1  # two pixels to the right
    assert pointing_game(near, masks, tolerance=0).tolist() == [False]
    assert pointing_game(near, masks, tolerance=2).tolist() == [True]
    assert pointing_game(near, masks).tolist() == [True]  # default: 15 px per 224 -> 2 px at 32


def test_overlay_puts_colour_where_the_map_is_high():
    images = torch.full((1, 3, 16, 16), 128, dtype=torch.uint8)
    att = torch.zeros(1, 1, 8, 8)
    att[0, 0, :, 4:] = 1  # right half
    out = overlay(images, att)
    assert out.shape == (1, 16, 16, 3) and out.dtype == np.uint8
    left, right = out[0, :, :6].astype(float), out[0, :, 10:].astype(float)
    assert right.mean() > left.mean() + 40  # inferno: bright for high, dark for low


def test_save_grid_writes_a_png(tmp_path):
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    save_grid(tmp_path / "g.png", images, torch.rand(3, 1, 8, 8), ["a", "b", "<c>"], [True, False, True], columns=2)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # no temporary file left
