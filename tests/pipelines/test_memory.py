"""The memory planner's decisions for a few budgets (a pure function: no GPU needed), and its wiring."""

import pytest
import torch

from omnivox.pipelines.memory import (GIB, decoder_stage, flow_stage, image_encoder_stage, parse_memory,
                                      plan_memory, ss_decoder_stage)
from omnivox.pipelines.testing import make_test_pipeline  # noqa: F401  (fixture module import check)

FLOW = 1_292_253_728 * 2 + 30_000_000  # bf16 blocks + fp32 pieces, about 2.6 GB
WEIGHTS = {"image_cond_model": 303_129_600 * 4, "sparse_structure_flow_model": FLOW, "sparse_structure_decoder":
           73_671_201 * 2, "shape_slat_flow_model_512": FLOW, "shape_slat_flow_model_1024": FLOW,
           "tex_slat_flow_model_1024": FLOW, "shape_slat_decoder": 474_231_463 * 2, "tex_slat_decoder": 474_216_006 * 2}


def cascade_stages(tokens: int = 9600, lr: int = 2200):
    return [image_encoder_stage(("image_cond_model",), 4101),
            flow_stage("sparse_structure", ("sparse_structure_flow_model",), 4096),
            ss_decoder_stage(("sparse_structure_decoder",)),
            flow_stage("shape_slat_lr", ("shape_slat_flow_model_512",), lr),
            decoder_stage("upsample", ("shape_slat_decoder",), lr),
            flow_stage("shape_slat", ("shape_slat_flow_model_1024",), tokens),
            flow_stage("tex_slat", ("tex_slat_flow_model_1024",), tokens),
            decoder_stage("decode", ("shape_slat_decoder", "tex_slat_decoder"), tokens)]


def test_parse_memory():
    assert parse_memory("16GB") == 16 * GIB == parse_memory("16 GiB") == parse_memory(16.0) == parse_memory("16")
    assert parse_memory("800MB") == 800 << 20
    assert parse_memory(None) is None and parse_memory(12345) == 12345
    for bad in ("lots", "-3GB", 0):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad)


def test_no_budget_keeps_everything_resident():
    plan = plan_memory(cascade_stages(), WEIGHTS, None)
    assert not plan.offload and plan.fits
    assert all(s.chunk_voxels is None and s.token_chunk is None for s in plan.stages)
    assert plan.peak_bytes > sum(WEIGHTS.values())


def test_large_budget_resident_16gb_offloads_without_chunking():
    assert not plan_memory(cascade_stages(), WEIGHTS, 40 * GIB).offload
    plan = plan_memory(cascade_stages(), WEIGHTS, 16 * GIB)
    assert plan.offload and plan.fits and plan.peak_bytes <= 16 * GIB
    assert all(s.chunk_voxels is None and s.token_chunk is None for s in plan.stages)
    decode = plan.stage("decode")
    assert decode.peak_bytes >= WEIGHTS["shape_slat_decoder"] + WEIGHTS["tex_slat_decoder"]
    assert "offload" in str(plan) and "decode" in str(plan)


def test_tight_budget_chunks_the_decoder_then_the_flows():
    plan = plan_memory(cascade_stages(tokens=30000), WEIGHTS, 9 * GIB)
    assert plan.offload and plan.fits and plan.peak_bytes <= 0.9 * 9 * GIB
    assert plan.stage("decode").chunk_voxels == 131_072  # the largest chunk that fits
    assert plan.stage("shape_slat").token_chunk is None  # 2.6 GB + ~1.8 GB of work fits
    tighter = plan_memory(cascade_stages(tokens=49000), WEIGHTS, 5 * GIB)
    assert tighter.stage("shape_slat").token_chunk == 16_384
    assert tighter.stage("decode").chunk_voxels == 65_536 and not tighter.fits


def test_impossible_budget_says_so():
    plan = plan_memory(cascade_stages(), WEIGHTS, 1 * GIB)
    assert not plan.fits and plan.notes and "OVER BUDGET" in str(plan)


def test_cpu_never_offloads():
    plan = plan_memory(cascade_stages(tokens=30000), WEIGHTS, 20 * GIB, device="cpu")
    assert not plan.offload
    assert plan.stage("decode").chunk_voxels is not None


def test_unknown_role_is_an_error():
    with pytest.raises(KeyError, match="no weights size"):
        plan_memory(cascade_stages(), {"image_cond_model": 1}, None)


def test_pipeline_plan_uses_model_sizes(pipe):
    plan = pipe.plan("1024_cascade", latent_tokens=9600, max_memory="1GB")
    assert plan.fits and not plan.offload  # tiny models
    assert [s.name for s in plan.stages] == ["condition", "sparse_structure", "ss_decode", "shape_slat_lr", "upsample",
                                             "shape_slat", "tex_slat", "decode"]
    assert set(plan.weights_bytes) >= {"sparse_structure_flow_model", "tex_slat_decoder"}
    assert 0 < plan.weights_bytes["sparse_structure_flow_model"] < 10 << 20
    small = pipe.plan("512", latent_tokens=200000, max_memory="2MB")
    assert small.stage("decode").chunk_voxels is not None


def test_token_chunking_gives_the_same_velocity(pipe):
    """The flow option the planner sets for tight budgets changes no value (float32, CPU)."""
    from omnivox.sparse.tensor import SparseTensor

    model = pipe.models.get("shape_slat_flow_model_512")
    gen = torch.Generator().manual_seed(0)
    coords = torch.cat([torch.zeros(40, 1, dtype=torch.int32),
                        torch.randperm(32 ** 3, generator=gen)[:40].sort().values[:, None].to(torch.int32)
                        .repeat(1, 3) % 32], 1)
    coords = torch.unique(coords, dim=0)
    x = SparseTensor.from_coords(coords, torch.randn(len(coords), 32, generator=gen))
    cond = torch.randn(1, 7, model.config.cond_channels, generator=gen)
    t = torch.tensor([500.0])
    with torch.no_grad():
        whole = model(x, t, cond).feats
        chunked = model(x, t, cond, token_chunk=7).feats
    assert whole.abs().max() > 0
    assert float((chunked - whole).norm() / whole.norm()) < 1e-6
    with pytest.raises(ValueError, match="rows"):
        model(x, t, cond, token_chunk=0)
    with pytest.warns(DeprecationWarning, match="token_chunk="):  # the old setter, for one release
        model.set_token_chunking(7)
    try:
        with torch.no_grad():
            assert torch.equal(model(x, t, cond).feats, chunked)
    finally:
        with pytest.warns(DeprecationWarning):
            model.set_token_chunking(None)


def test_model_store_counts_weight_bytes_once_per_model():
    from omnivox.pipelines.placement import ModelStore, module_bytes

    built = []

    def loader(role):
        built.append(role)
        return torch.nn.Linear(int(torch.randint(3, 9, ())), 5)

    store = ModelStore(loader, torch.device("cpu"))
    first = store.weights_bytes("a")
    assert first == module_bytes(store.get("a")) and store.weights_bytes("a") == first and built == ["a"]
    store._models["a"] = torch.nn.Linear(40, 5, dtype=torch.float64)  # a replaced model is counted again
    assert store.weights_bytes("a") == (40 * 5 + 5) * 8


def test_budget_that_cannot_be_met_raises_with_what_it_needs():
    from omnivox.pipelines.memory import BudgetError

    plan = plan_memory(cascade_stages(), WEIGHTS, 2 * GIB)
    assert not plan.fits and plan.required_budget_bytes > 2 * GIB
    with pytest.raises(BudgetError, match=r"stage '.*' needs about .* GiB .* at least .* GiB") as caught:
        plan_memory(cascade_stages(), WEIGHTS, 2 * GIB, strict=True)
    assert isinstance(caught.value, ValueError)
    # The budget the error names is enough: planning again with it fits.
    assert plan_memory(cascade_stages(), WEIGHTS, plan.required_budget_bytes, strict=True).fits
    assert plan_memory(cascade_stages(), WEIGHTS, 16 * GIB, strict=True).check_budget().fits


def test_8bit_flows_halve_what_offloading_stages_hold_and_are_shown():
    flows = [r for r in WEIGHTS if "flow" in r]
    int8 = {r: (b // 2 + 1536 * 200 if r in flows else b) for r, b in WEIGHTS.items()}
    formats = {r: ("int8" if r in flows else "bfloat16") for r in WEIGHTS}
    bf16 = plan_memory(cascade_stages(), WEIGHTS, 8 * GIB, weight_formats={r: "bfloat16" for r in WEIGHTS})
    small = plan_memory(cascade_stages(), int8, 8 * GIB, weight_formats=formats)
    assert bf16.offload and small.offload and bf16.fits and small.fits
    for name in ("sparse_structure", "shape_slat", "tex_slat"):
        assert small.stage(name).weights_bytes < 0.51 * bf16.stage(name).weights_bytes
        assert small.stage(name).peak_bytes < bf16.stage(name).peak_bytes
    text = str(small)
    assert "shape_slat_flow_model_1024 (int8, 1.22 GiB)" in text and "visit the device per stage" in text
    with pytest.raises(ValueError, match="weights_dtype='int8'"):  # the hint appears while flows are 16-bit
        plan_memory(cascade_stages(), WEIGHTS, 3 * GIB, weight_formats={r: "bfloat16" for r in WEIGHTS}, strict=True)


def test_chunking_with_models_resident_comes_before_offloading():
    # Weights fit with room for every stage once the decoder is chunked: no offloading (no copies per stage).
    weights = {r: b // 4 for r, b in WEIGHTS.items()}  # 3.85 GiB in all
    plan = plan_memory(cascade_stages(tokens=15000), weights, 9 * GIB)
    assert plan.fits and not plan.offload
    assert plan.stage("decode").chunk_voxels is not None
    assert any("stay resident" in note for note in plan.notes)
    assert plan.peak_bytes <= 0.9 * 9 * GIB


def test_capped_device_memory_is_a_no_op_off_cuda():
    from omnivox.pipelines.placement import capped_device_memory

    with capped_device_memory("cpu", 1 * GIB):
        pass
    with capped_device_memory("cuda", None):
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capped_device_memory_binds_reserved_memory_and_restores():
    from omnivox.pipelines.placement import capped_device_memory

    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    with capped_device_memory("cuda", base + (256 << 20)):
        kept = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
        del kept
    torch.empty(512 << 20, dtype=torch.uint8, device="cuda")  # the limit is gone again


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_budget_does_not_count_memory_held_outside_the_pipeline():
    from omnivox.pipelines.placement import ModelStore, capped_device_memory, memory_held_outside

    model = torch.nn.Linear(1024, 1024)
    store = ModelStore(lambda role: model, torch.device("cuda"))
    with store.on_device(["m"], offload=False):
        pass  # resident from now on: counted by the budget, so not outside it
    torch.cuda.empty_cache()
    before = memory_held_outside(store)
    held = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # the caller's tensor, not the pipeline's
    outside = memory_held_outside(store)
    assert outside - before == 256 << 20
    base = torch.cuda.memory_reserved() - outside - store.resident_bytes()
    with capped_device_memory("cuda", base + store.resident_bytes() + (192 << 20), outside):
        kept = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")  # within the budget despite `held`
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
        del kept
    del held


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_models_are_pinned_on_their_first_cuda_visit_and_keep_their_values():
    from omnivox.pipelines.placement import ModelStore

    torch.manual_seed(int(torch.randint(0, 1 << 30, ())))
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    store = ModelStore(lambda role: model, torch.device("cuda"))
    x = torch.randn(8, 64)
    with store.on_device(["m"], offload=True) as models:
        assert all(p.device.type == "cuda" for p in models["m"].parameters())
        on_device = models["m"](x.cuda()).cpu()
    assert all(p.device.type == "cpu" and p.is_pinned() for p in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])
    torch.testing.assert_close(on_device, model(x), rtol=1e-4, atol=1e-5)
