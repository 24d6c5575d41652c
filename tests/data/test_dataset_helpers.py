"""Dataset helpers: condition-image crop, --data_dir parsing, balanced batch splits (no assets needed)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omnivox.data.datasets import _balanced_groups, load_condition_image, parse_roots


def _view(folder, alpha_box, size=40, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 4), np.uint8)
    x0, y0, x1, y1 = alpha_box
    image[y0:y1, x0:x1, :3] = rng.integers(0, 256, (y1 - y0, x1 - x0, 3))
    image[y0:y1, x0:x1, 3] = rng.integers(1, 256, (y1 - y0, x1 - x0))
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGBA").save(folder / "000.png")
    (folder / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "000.png"}]}))
    return image


def test_condition_image_is_the_square_around_the_alpha_box_premultiplied(tmp_path):
    image = _view(tmp_path / "a", (10, 14, 18, 30))  # 8 wide, 16 tall -> a 16x16 square centred on the box
    out = load_condition_image(tmp_path / "a", np.random.default_rng(0), 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    crop = image[14:30, 6:22].astype(np.float64) / 255
    expected = crop[..., :3] * crop[..., 3:]
    # Same size: Lanczos resampling leaves the crop unchanged.
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1 / 255 + 1e-6)
    assert float(out[:, :, :4].abs().max()) == 0  # columns left of the box are transparent -> black


def test_condition_image_rejects_empty_views_and_escaping_paths(tmp_path):
    _view(tmp_path / "empty", (0, 0, 0, 0))
    with pytest.raises(ValueError, match="fully transparent"):
        load_condition_image(tmp_path / "empty", np.random.default_rng(0), 16)
    _view(tmp_path / "evil", (1, 1, 5, 5))
    (tmp_path / "evil" / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "../empty/000.png"}]}))
    with pytest.raises(ValueError, match="file_path"):
        load_condition_image(tmp_path / "evil", np.random.default_rng(0), 16)


def test_data_dir_forms(tmp_path):
    defaults = {"dual_grid": "dual_grid_256"}
    (name, base, dirs), = parse_roots(str(tmp_path), defaults)
    assert base == tmp_path and dirs == {"dual_grid": tmp_path / "dual_grid_256"}
    spec = json.dumps({"A": {"base": str(tmp_path), "dual_grid": "elsewhere"}, "B": {"base": str(tmp_path)}})
    parsed = parse_roots(spec, defaults)
    assert [p[2]["dual_grid"] for p in parsed] == [tmp_path / "elsewhere", tmp_path / "dual_grid_256"]
    with pytest.raises(ValueError, match="'base'"):
        parse_roots({"A": {"dual_grid": "x"}}, defaults)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_roots({"A": {"base": str(tmp_path / "missing")}}, defaults)
    with pytest.raises(ValueError, match="valid JSON"):
        parse_roots("{not json", defaults)


def test_balanced_groups_split_loads_evenly_and_keep_every_sample():
    loads = [100.0, 90.0, 10.0, 10.0, 5.0, 85.0]
    groups = _balanced_groups(loads, 2)
    assert sorted(i for g in groups for i in g) == list(range(6))
    totals = [sum(loads[i] for i in g) for g in groups]
    assert max(totals) <= sum(loads) / 2 + max(loads) / 2  # greedy (LPT) bound for two packs
    exact = _balanced_groups([5.0, 5.0, 4.0, 4.0, 3.0, 3.0], 2)
    assert [sum([5.0, 5.0, 4.0, 4.0, 3.0, 3.0][i] for i in g) for g in exact] == [12.0, 12.0]
    assert len(_balanced_groups([1.0, 1.0], 4)) == 2  # never an empty pack
