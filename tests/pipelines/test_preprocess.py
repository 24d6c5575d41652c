"""Image preprocessing (spec models.md 9.1) on the real example images."""

import numpy as np
import pytest
from PIL import Image

from omnivox.pipelines.preprocess import BiRefNetOnnx, preprocess_image

from .conftest import RGB_IMAGE, RGBA_IMAGE


def _hand_preprocess(rgba: Image.Image) -> np.ndarray:
    """Spec 9.1 steps 4-5 written out with plain loops-free numpy (crop box via PIL, as the reference)."""
    alpha = np.asarray(rgba)[..., 3]
    ys, xs = np.where(alpha > 204)
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    size = max(xs.max() - xs.min(), ys.max() - ys.min())
    box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
    # float32, as the reference computes it
    crop = np.asarray(rgba.crop(tuple(int(round(v)) for v in box))).astype(np.float32) / 255
    return (crop[..., :3] * crop[..., 3:] * np.float32(255)).astype(np.uint8)


def test_rgba_uses_alpha_crops_and_premultiplies(assets):
    image = Image.open(assets / RGBA_IMAGE)
    image.load()
    out = preprocess_image(image)
    assert out.mode == "RGB" and out.width == out.height
    expected = _hand_preprocess(image.resize((1024, 1024), Image.LANCZOS) if max(image.size) > 1024 else image)
    np.testing.assert_array_equal(np.asarray(out), expected)
    # Premultiplied on black: fully transparent source pixels are black.
    assert (np.asarray(out)[0, 0] == 0).all()


def test_rgb_without_background_model_lists_the_options(assets):
    with pytest.raises(ValueError, match="background_model=PATH.onnx") as info:
        preprocess_image(assets / RGB_IMAGE)
    assert "RGBA" in str(info.value) and "--background-model" in str(info.value)


def test_rgb_with_a_background_remover_callable(assets):
    seen = {}

    def remover(rgb: Image.Image) -> Image.Image:
        seen["size"] = rgb.size
        pixels = np.asarray(rgb).astype(np.int32)
        return Image.fromarray(np.where(pixels.sum(-1) > 300, 255, 0).astype(np.uint8), mode="L")

    out = preprocess_image(assets / RGB_IMAGE, remover)
    assert max(seen["size"]) == 1024  # shrunk from 1870 before background removal
    assert out.width == out.height and out.mode == "RGB"


class FakeSession:
    """Stands in for an onnxruntime session: records the input, returns a left-half-foreground logit map."""

    class _Input:
        name = "input_image"

    def get_inputs(self):
        return [self._Input()]

    def run(self, outputs, feeds):
        self.feed = feeds["input_image"]
        logits = np.full((1, 1, 1024, 1024), -20.0, np.float32)
        logits[..., :512] = 20.0
        return [np.zeros(1), logits]


def test_birefnet_onnx_wrapper_normalises_and_resizes_back(assets):
    session = FakeSession()
    remover = BiRefNetOnnx(session=session)
    rgb = Image.open(assets / RGB_IMAGE).convert("RGB").resize((600, 330))
    mask = remover(rgb)
    assert session.feed.shape == (1, 3, 1024, 1024) and session.feed.dtype == np.float32
    pixel = np.asarray(rgb.resize((1024, 1024), Image.BILINEAR), np.float32)[0, 0] / 255
    np.testing.assert_allclose(session.feed[0, :, 0, 0], (pixel - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                               rtol=1e-5)
    m = np.asarray(mask)
    assert mask.mode == "L" and mask.size == (600, 330)
    assert m[:, :280].min() > 250 and m[:, 320:].max() < 5


def test_birefnet_onnx_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="background model"):
        BiRefNetOnnx(tmp_path / "missing.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=".onnx"):
        BiRefNetOnnx(tmp_path / "model.bin")


class ProbabilitySession(FakeSession):
    """An export that ends with the sigmoid: outputs already in [0, 1]."""

    def run(self, outputs, feeds):
        self.feed = feeds["input_image"]
        prob = np.zeros((1, 1, 1024, 1024), np.float32)
        prob[..., 512:] = 0.5
        return [prob]


def test_birefnet_onnx_detects_probability_outputs():
    mask = np.asarray(BiRefNetOnnx(session=ProbabilitySession())(Image.new("RGB", (64, 32), (200, 10, 10))))
    assert mask[:, :28].max() == 0 and abs(int(mask[:, 36:].min()) - 127) <= 1  # no second sigmoid
    forced = np.asarray(BiRefNetOnnx(session=ProbabilitySession(), apply_sigmoid=True)(Image.new("RGB", (64, 32))))
    assert abs(int(forced[:, :28].max()) - 127) <= 1  # sigmoid(0) = 0.5


def test_background_model_found_beside_the_weights(tiny_weights, tmp_path):
    from omnivox.pipelines.config import find_background_model, load_pipeline_config

    config = load_pipeline_config(tiny_weights)
    assert config.background_model_name == "briaai/RMBG-2.0"
    config.root = tmp_path / "TRELLIS.2-4B"
    assert find_background_model(config) is None
    onnx = tmp_path / "RMBG-2.0" / "onnx" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"onnx")
    assert find_background_model(config) == onnx
