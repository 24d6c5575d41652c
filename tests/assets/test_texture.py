"""`omnivox.assets.texture`: the one glTF wrap rule and bilinear read, and `frames.y_up_to_z_up_voxels`."""

import numpy as np
import pytest
import torch

from omnivox.assets.frames import y_up_to_z_up, y_up_to_z_up_voxels
from omnivox.assets.scene import WrapMode
from omnivox.assets.texture import WRAP_NAMES, bilinear, wrap_mode, wrap_texel_index


def _expected(i: int, size: int, mode: WrapMode) -> int:
    """The glTF rule, one index at a time."""
    if mode == WrapMode.CLAMP_TO_EDGE:
        return min(max(i, 0), size - 1)
    if mode == WrapMode.MIRRORED_REPEAT:
        period = i % (2 * size)  # Python's % is the mathematical modulo
        return period if period < size else 2 * size - 1 - period
    return i % size


@pytest.mark.parametrize("mode", list(WrapMode))
@pytest.mark.parametrize("size", [1, 3, 4, 8])
def test_wrap_follows_the_gltf_rule_for_ints_tensors_and_powers_of_two(mode, size):
    index = torch.arange(-3 * size - 2, 3 * size + 3)
    expected = torch.tensor([_expected(int(i), size, mode) for i in index])
    assert torch.equal(wrap_texel_index(index, size, mode), expected)
    assert torch.equal(wrap_texel_index(index, torch.tensor(size), mode), expected)
    name = {v: k for k, v in WRAP_NAMES.items()}[mode]
    assert torch.equal(wrap_texel_index(index, size, name), expected)
    if size & (size - 1) == 0:
        assert torch.equal(wrap_texel_index(index, torch.tensor(size), mode, power_of_two=True), expected)


def test_wrap_mode_names_and_codes():
    assert wrap_mode("mirror") is WrapMode.MIRRORED_REPEAT and wrap_mode(1) is WrapMode.CLAMP_TO_EDGE
    assert wrap_mode(WrapMode.REPEAT) is WrapMode.REPEAT
    with pytest.raises(ValueError, match=r"wrap must be one of \('repeat', 'clamp', 'mirror'\), got 'wrap'"):
        wrap_mode("wrap")
    with pytest.raises(ValueError, match="wrap must be one of"):
        wrap_mode(7)


def test_bilinear_reads_texel_centres_and_blends_between_them():
    image = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1)  # (H, W, C), value = 4 * row + column
    centres = torch.tensor([[(x + 0.5) / 4, (y + 0.5) / 3] for y in range(3) for x in range(4)])
    assert torch.equal(bilinear(image, centres, "clamp", "clamp")[:, 0], torch.arange(12, dtype=torch.float32))
    halfway = torch.tensor([[1.0 / 4, 1.0 / 3]])  # between columns 0, 1 and rows 0, 1
    assert bilinear(image, halfway, "clamp", "clamp").item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    # Per-axis modes: x repeats past the right edge (column 3 blends with column 0), y clamps at the bottom.
    corner = torch.tensor([[1.0, 1.0]])
    assert bilinear(image, corner, "repeat", "clamp").item() == pytest.approx((11 + 8) / 2)
    assert bilinear(image, corner, "clamp", "clamp").item() == pytest.approx(11)


def test_voxel_indices_turn_as_their_cell_centres_do():
    resolution = 8
    coords = np.array([[0, 0, 0], [1, 2, 3], [7, 0, 5], [3, 7, 7]])
    centres = (coords + 0.5) / resolution - 0.5
    turned = (y_up_to_z_up(centres) + 0.5) * resolution - 0.5
    assert np.array_equal(y_up_to_z_up_voxels(coords, resolution), np.rint(turned).astype(coords.dtype))
