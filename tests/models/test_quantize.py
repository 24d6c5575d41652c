"""8-bit flow weights (`omnivox.models.quantize`): the codes, the layer, whole models, files, and the Triton kernels."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omnivox.models import (DINOv3Config, DINOv3ViT, SLatFlowModel, SparseStructureFlowModel, from_pretrained,
                            save_pretrained)
from omnivox.models.quantize import (CODE_MAX, QuantizedLinear, check_weights_dtype, dequantize_rows_reference,
                                     quantize_model, quantize_rows_fp8_reference, quantize_weight,
                                     supports_8bit_weights, weights_dtype_of)
from omnivox.sparse import SparseTensor
from tests.conftest import HANG_GUARD_S

from .helpers import random_voxels, randomize, tiny_flow_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FORMATS = ("int8", "fp8")
# The largest relative rounding step of a code: int8 codes are exact integers (the error is half a scale step,
# checked separately); e4m3 keeps 3 mantissa bits.
FP8_STEP = 2.0 ** -3


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _tiny_sparse_flow(dtype: str = "float32", seed: int = 0) -> SLatFlowModel:
    return randomize(SLatFlowModel(tiny_flow_config(resolution=8, in_channels=8, dtype=dtype)).eval(), seed, std=0.1)


def _sparse_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    coords = random_voxels(40, 8, batch=2, seed=seed)
    x = SparseTensor.from_coords(coords, torch.randn(len(coords), 8, generator=gen), 2)
    return x, torch.tensor([700.0, 250.0]), torch.randn(2, 5, 16, generator=gen)


@pytest.mark.parametrize("weights_dtype", FORMATS)
def test_codes_reconstruct_each_row_within_one_step(weights_dtype):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(33, 70, generator=gen, dtype=torch.float64)
    weight = weight * torch.rand(33, 1, generator=gen, dtype=torch.float64)
    weight[5] = 0  # an all-zero row must stay zero (scale 1)
    codes, scale = quantize_weight(weight, weights_dtype)
    assert codes.dtype == (torch.int8 if weights_dtype == "int8" else torch.float8_e4m3fn)
    assert scale.shape == (33,) and scale.dtype == torch.float32 and float(scale[5]) == 1.0
    assert float(codes.float().abs().max()) <= CODE_MAX[weights_dtype]
    # Every row uses its full code range (its largest weight maps to the largest code).
    assert torch.allclose(codes.float().abs().amax(1)[scale != 1], torch.tensor(CODE_MAX[weights_dtype]))
    restored = codes.double() * scale.double()[:, None]
    error = (restored - weight).abs()
    if weights_dtype == "int8":
        assert bool((error <= scale.double()[:, None] * 0.5 * (1 + 1e-6) + 1e-12).all())
    else:
        assert bool((error <= weight.abs() * FP8_STEP / 2 * (1 + 1e-6) + scale.double()[:, None] * 2.0 ** -9).all())
    assert float(restored[5].abs().max()) == 0.0


def test_references_against_float64():
    gen = torch.Generator().manual_seed(2)
    codes, scale = quantize_weight(torch.randn(16, 48, generator=gen), "int8")
    exact = codes.double() * scale.double()[:, None]
    assert _relative(dequantize_rows_reference(codes, scale, torch.float32), exact) < 1e-7
    assert _relative(dequantize_rows_reference(codes, scale, torch.bfloat16), exact) < 2.0 ** -8
    x = torch.randn(9, 48, generator=gen) * torch.rand(9, 1, generator=gen) * 100
    x[3] = 0
    fp8, row_scale = quantize_rows_fp8_reference(x)
    assert row_scale.shape == (9, 1) and float(row_scale[3]) == 1.0
    restored = fp8.double() * row_scale.double()
    bound = x.double().abs() * FP8_STEP / 2 + row_scale.double() * 2.0 ** -9
    assert bool(((restored - x.double()).abs() <= bound).all())


@pytest.mark.parametrize("weights_dtype", FORMATS)
def test_quantized_linear_computes_the_dequantized_product(weights_dtype):
    gen = torch.Generator().manual_seed(3)
    linear = nn.Linear(40, 24)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(24, 40, generator=gen))
        linear.bias.copy_(torch.randn(24, generator=gen))
    layer = QuantizedLinear.from_linear(linear, weights_dtype)
    x = torch.randn(2, 7, 40, generator=gen)
    dequantized = layer.codes.double() * layer.weight_scale.double()[:, None]
    expected = x.double() @ dequantized.T + linear.bias.double()
    out = layer(x)
    assert out.shape == (2, 7, 24) and out.dtype == torch.float32
    assert _relative(out, expected) < 1e-6
    assert torch.equal(layer.weight, dequantized.float())  # what code reading `.weight` sees
    # The 8-bit product stays close to the original layer's: int8 ~0.5 %, e4m3 ~3 % of the output's norm.
    assert 0 < _relative(out, linear(x)) < (0.01 if weights_dtype == "int8" else 0.05)
    assert set(layer.state_dict()) == {"weight", "weight_scale", "bias"}


@pytest.mark.parametrize("weights_dtype", FORMATS)
def test_quantized_flow_models_stay_close_and_shrink(weights_dtype):
    model = _tiny_sparse_flow()
    x, t, cond = _sparse_inputs()
    with torch.no_grad():
        reference = model(x, t, cond).feats
        quantized = quantize_model(copy.deepcopy(model), weights_dtype)
        out = quantized(x, t, cond).feats
        prepared = quantized(x, t, quantized.prepare_condition(cond)).feats
    assert weights_dtype_of(quantized) == weights_dtype and weights_dtype_of(model) is None
    replaced = [m for m in quantized.modules() if isinstance(m, QuantizedLinear)]
    assert len(replaced) == 7 * len(model.blocks)  # to_qkv, to_out; to_q, to_kv, to_out; the MLP's two
    assert type(quantized.input_layer) is nn.Linear and type(quantized.adaLN_modulation[1]) is nn.Linear
    assert 0 < _relative(out, reference) < (0.03 if weights_dtype == "int8" else 0.1)
    assert _relative(prepared, out) < 1e-6
    # The bytes held are the 4-byte weights replaced by 1-byte codes plus one float32 scale per output row.
    from omnivox.pipelines.placement import module_bytes

    linears = [m for m in model.blocks.modules() if type(m) is nn.Linear]
    saved = sum(m.weight.numel() * (4 - 1) - 4 * m.out_features for m in linears)
    assert module_bytes(quantized) == module_bytes(model) - saved and saved > 0
    assert quantize_model(quantized, weights_dtype) is quantized  # already done: unchanged
    with pytest.raises(ValueError, match="already holds"):
        quantize_model(quantized, "fp8" if weights_dtype == "int8" else "int8")


@pytest.mark.parametrize("weights_dtype", FORMATS)
def test_dinov3_quantizes_its_layers_and_keeps_its_features(tmp_path, weights_dtype):
    """DINOv3 (float32, the largest model after the flows): its layers' Linear weights in 8 bits, on a real image."""
    from PIL import Image

    from omnivox.models.dinov3 import normalize_images

    image_path = REPO.parent / "shared" / "assets" / "images" / "ToyCar_screenshot_large.jpg"
    if not image_path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this test: {image_path} is missing")
        pytest.skip("needs ../shared/assets")
    seed = int(torch.randint(0, 1 << 30, ()))
    model = randomize(DINOv3ViT(DINOv3Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                             intermediate_size=128)).eval(), seed, std=0.05)
    picture = Image.open(image_path).convert("RGB").resize((96, 64))
    pixels = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)[None].float() / 255
    images = normalize_images(pixels)
    assert supports_8bit_weights(model)
    with torch.no_grad():
        reference = model(images)
        quantized = quantize_model(copy.deepcopy(model), weights_dtype)
        out = quantized(images)
    replaced = [m for m in quantized.modules() if isinstance(m, QuantizedLinear)]
    assert len(replaced) == 6 * len(model.layer)  # q, k, v, o; the MLP's up and down
    assert type(quantized.embeddings.patch_embeddings) is type(model.embeddings.patch_embeddings)
    assert 0 < _relative(out, reference) < (0.03 if weights_dtype == "int8" else 0.1)
    from omnivox.pipelines.placement import module_bytes

    linears = [m for m in model.layer.modules() if type(m) is nn.Linear]  # float32: 4 bytes -> 1, plus a scale
    saved = sum(m.weight.numel() * (4 - 1) - 4 * m.out_features for m in linears)
    assert module_bytes(quantized) == module_bytes(model) - saved and saved > 0
    # The image-encoder folder loads quantized on the fly (there is no saved 8-bit copy for it), in int8 for either
    # format: a float32 model never takes the fp8 GEMM, and int8 codes are finer.
    save_pretrained(model, tmp_path / "dinov3")
    loaded = from_pretrained(tmp_path / "dinov3", weights_dtype=weights_dtype)
    int8 = out if weights_dtype == "int8" else quantize_model(copy.deepcopy(model), "int8")(images)
    with torch.no_grad():
        assert weights_dtype_of(loaded) == "int8" and torch.equal(loaded(images), int8)
        if weights_dtype == "fp8":
            assert _relative(int8, reference) < _relative(out, reference)


def test_dense_flow_quantizes_too():
    model = randomize(SparseStructureFlowModel(tiny_flow_config(dtype="float32")).eval(), 4, std=0.1)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 4, 4, 4, generator=gen)
    t, cond = torch.tensor([900.0, 100.0]), torch.randn(2, 3, 16, generator=gen)
    with torch.no_grad():
        reference = model(x, t, cond)
        out = quantize_model(copy.deepcopy(model), "int8")(x, t, cond)
    assert 0 < _relative(out, reference) < 0.03


def test_bad_formats_and_models_are_refused():
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        check_weights_dtype("int4")
    with pytest.raises(TypeError, match="no layers to quantize"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), "int8")
    assert not supports_8bit_weights(nn.Linear(4, 4)) and supports_8bit_weights(_tiny_sparse_flow())


@pytest.mark.parametrize("weights_dtype", FORMATS)
def test_saved_8bit_file_loads_back_bit_identical(tmp_path, weights_dtype):
    from safetensors import safe_open

    model = _tiny_sparse_flow("bfloat16", seed=5)
    save_pretrained(model, tmp_path / "flow")
    x, t, cond = _sparse_inputs(5)
    with torch.no_grad():
        on_the_fly = from_pretrained(tmp_path / "flow", weights_dtype=weights_dtype)
        expected = on_the_fly(x, t, cond).feats
        json_path, weights_path = save_pretrained(on_the_fly, tmp_path / "flow")
        assert weights_path == tmp_path / f"flow.{weights_dtype}.safetensors"
        assert (tmp_path / "flow.safetensors").is_file()  # the released file is left alone
        with safe_open(str(weights_path), framework="pt") as handle:
            assert handle.metadata()["omnivox.weights_dtype"] == weights_dtype
            assert handle.get_tensor("blocks.0.mlp.mlp.0.weight").dtype == on_the_fly.blocks[0].mlp.mlp[0].codes.dtype
            assert handle.get_tensor("blocks.0.mlp.mlp.0.weight_scale").dtype == torch.float32
        (tmp_path / "flow.safetensors").unlink()  # the 8-bit file alone is enough
        loaded = from_pretrained(tmp_path / "flow", weights_dtype=weights_dtype)
        assert torch.equal(loaded(x, t, cond).feats, expected)
    with pytest.raises(FileNotFoundError, match=f"8-bit weights only: pass weights_dtype='{weights_dtype}'"):
        from_pretrained(tmp_path / "flow")
    other = "fp8" if weights_dtype == "int8" else "int8"
    with pytest.raises(FileNotFoundError):  # neither that 8-bit file nor the released weights are there
        from_pretrained(tmp_path / "flow", weights_dtype=other)
    weights_path.rename(tmp_path / f"flow.{other}.safetensors")  # a file whose name lies about its contents
    with pytest.raises(ValueError, match=f"holds {weights_dtype} weights"):
        from_pretrained(tmp_path / "flow", weights_dtype=other)


def test_8bit_weights_are_for_flow_models_only(tmp_path):
    from omnivox.models import build_model

    from .helpers import tiny_ss_decoder_config

    decoder = build_model("SparseStructureDecoder", vars(tiny_ss_decoder_config()))
    save_pretrained(decoder, tmp_path / "dec")
    with pytest.raises(ValueError, match="for the flow models"):
        from_pretrained(tmp_path / "dec", weights_dtype="int8")
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        from_pretrained(tmp_path / "dec", weights_dtype="int4")


def test_model_store_quantizes_flows_and_counts_real_bytes():
    from omnivox.pipelines.placement import ModelStore, module_bytes

    flows = {"flow": _tiny_sparse_flow("bfloat16"), "other": nn.Linear(8, 8)}
    plain_bytes = module_bytes(flows["flow"])
    store = ModelStore(lambda role: copy.deepcopy(flows[role]), torch.device("cpu"), weights_dtype="int8")
    assert store.weights_format("flow") == "int8" and store.weights_format("other") == "float32"
    fp8_store = ModelStore(lambda role: copy.deepcopy(flows[role]), torch.device("cpu"), weights_dtype="fp8")
    assert fp8_store.weights_format("flow") == "fp8"
    dinov3 = DINOv3ViT(DINOv3Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16))
    assert ModelStore(lambda role: dinov3, torch.device("cpu"), weights_dtype="fp8").weights_format("enc") == "int8"
    linears = [m for m in flows["flow"].blocks.modules() if type(m) is nn.Linear]  # bf16: 2 bytes -> 1
    expected = plain_bytes - sum(m.weight.numel() - 4 * m.out_features for m in linears)
    assert store.weights_bytes("flow") == module_bytes(store.get("flow")) == expected
    assert type(store.get("other")) is nn.Linear
    with pytest.raises(ValueError, match="weights_dtype"):
        ModelStore(lambda role: None, torch.device("cpu"), weights_dtype="int4")


def check_kernels(device: torch.device) -> list:
    """The Triton kernels against their references on ``device`` (CPU: Triton's interpreter); the problems found.

    Each output may differ from the reference by one rounding step of its format: Triton's interpreter rounds
    float -> bf16 and float -> e4m3 towards zero where PyTorch rounds to nearest. Its e4m3 cast also loses the carry
    into the exponent (124.3 becomes 64 where the GPU gives 128), so on the CPU codes whose reference is a power of
    two are not compared; the GPU check compares every code.
    """
    from omnivox.models.kernels.triton import weights8

    gen = torch.Generator().manual_seed(7)
    problems = []
    for weights_dtype in FORMATS:
        weight = torch.randn(50, 300, generator=gen) * torch.rand(50, 1, generator=gen)
        codes, scale = (t.to(device) for t in quantize_weight(weight, weights_dtype))
        for dtype, step in ((torch.float32, 2.0 ** -23), (torch.bfloat16, 2.0 ** -7)):
            ours = weights8.dequantize_rows(codes, scale, dtype).double()
            theirs = dequantize_rows_reference(codes, scale, dtype).double()
            if not bool(((ours - theirs).abs() <= theirs.abs() * step * 1.01).all()) or _relative(ours, theirs) == 1:
                problems.append(f"dequantize_rows {weights_dtype} -> {dtype}: off by more than one step")
    for rows, cols in ((37, 300), (5, 8192)):
        x = (torch.randn(rows, cols, generator=gen) * torch.rand(rows, 1, generator=gen) * 50).to(torch.bfloat16)
        x[1] = 0
        x = x.to(device)
        codes, scale = weights8.quantize_rows_fp8(x)
        ref_codes, ref_scale = quantize_rows_fp8_reference(x)
        if codes.shape != x.shape or scale.shape != (rows, 1) or not torch.equal(scale, ref_scale):
            problems.append(f"quantize_rows_fp8 {rows}x{cols}: scales differ")
        ours, theirs = codes.double(), ref_codes.double()
        close = (ours - theirs).abs() <= theirs.abs() * FP8_STEP * 1.01
        if device.type == "cpu":
            close |= torch.frexp(theirs)[0].abs() == 0.5
        if not bool(close.all()):
            problems.append(f"quantize_rows_fp8 {rows}x{cols}: codes off by more than one step")
    return problems


def test_kernels_match_references_in_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    script = ("import torch; from tests.models.test_quantize import check_kernels; "
              "problems = check_kernels(torch.device('cpu')); print('\\n'.join(problems)); "
              "raise SystemExit(bool(problems))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernels_match_references_on_the_gpu():
    pytest.importorskip("triton")
    assert check_kernels(torch.device("cuda")) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp8_matmul_on_the_gpu_matches_the_dequantized_product():
    from omnivox.models.quantize import fp8_matmul_supported

    if not fp8_matmul_supported(torch.device("cuda")):
        pytest.skip("no fp8 matrix units")
    gen = torch.Generator(device="cuda").manual_seed(6)
    linear = nn.Linear(256, 512, device="cuda", dtype=torch.bfloat16)
    layer = QuantizedLinear.from_linear(linear, "fp8")
    x = torch.randn(300, 256, device="cuda", generator=gen, dtype=torch.bfloat16)
    assert layer._uses_fp8_matmul(x)
    with torch.no_grad():
        out = layer(x)
        exact = x.double() @ (layer.codes.double() * layer.weight_scale.double()[:, None]).T + linear.bias.double()
    # Only the activations' fp8 rounding (<= 2^-4 per element) separates the two.
    assert _relative(out, exact) < 0.04
