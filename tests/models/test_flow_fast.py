"""Fast paths of the flow forward: no host reads per call, batched equal-length attention, CUDA-graph replay."""

import pytest
import torch

from omnivox.models import SLatFlowModel, SparseStructureFlowModel
from omnivox.pipelines.runtime import GraphedCall
from omnivox.sparse import SparseTensor
from omnivox.sparse.attention import varlen_attention

from .helpers import random_voxels, randomize, relative_error, tiny_flow_config
from .test_flow import _reference_sample, _state64


def _copies(coords: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` copies of a one-item token set as items 0 .. batch-1 (the sampler's batched CFG layout)."""
    return torch.cat([torch.cat([torch.full((len(coords), 1), b, dtype=torch.int32), coords[:, 1:]], 1)
                      for b in range(batch)])


def _attention64(q, k, v, q_lens, kv_lens):
    out, qs, ks = [], 0, 0
    for nq, nk in zip(q_lens, kv_lens):
        w = torch.softmax(torch.einsum("lhd,mhd->hlm", q[qs:qs + nq], k[ks:ks + nk]) / q.shape[-1] ** 0.5, -1)
        out.append(torch.einsum("hlm,mhd->lhd", w, v[ks:ks + nk]))
        qs, ks = qs + nq, ks + nk
    return torch.cat(out)


@pytest.mark.parametrize("batch", [2, 3])
def test_equal_length_attention_is_one_batched_call_matching_float64(batch):
    gen = torch.Generator().manual_seed(batch)
    q = torch.randn(batch * 37, 2, 8, generator=gen)
    k = torch.randn(batch * 11, 2, 8, generator=gen)
    v = torch.randn(batch * 11, 2, 8, generator=gen)
    out = varlen_attention(q, k, v, [37] * batch, [11] * batch)
    expected = _attention64(q.double(), k.double(), v.double(), [37] * batch, [11] * batch)
    assert relative_error(out, expected) < 1e-6
    # Items really are separated: changing item 0's values leaves item 1's output alone.
    v2 = v.clone()
    v2[:11] += torch.randn(11, 2, 8, generator=gen)
    out2 = varlen_attention(q, k, v2, [37] * batch, [11] * batch)
    assert torch.equal(out2[37:], out[37:]) or relative_error(out2[37:], out[37:]) < 1e-6
    assert relative_error(out2[:37], out[:37]) > 1e-3


def test_batched_cfg_forward_matches_float64_per_item():
    """A batch of two copies of one token set (as the sampler's batched CFG) against float64 single-item calls."""
    cfg = tiny_flow_config(in_channels=8, out_channels=8)
    model = randomize(SLatFlowModel(cfg), seed=3).eval()
    state64 = _state64(model)
    one = random_voxels(40, 6, seed=4)
    coords = _copies(one, 2)
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(len(coords), 8, generator=gen)
    t = torch.tensor([300.0, 300.0])
    cond = torch.randn(2, 5, cfg.cond_channels, generator=gen)
    with torch.no_grad():
        out = model(SparseTensor.from_coords(coords, feats, 2), t, cond).feats
        for b in range(2):
            rows = slice(b * 40, (b + 1) * 40)
            ref = _reference_sample(state64, feats[rows].double(), one[:, 1:], float(t[b]), cond[b].double(), cfg)
            assert relative_error(out[rows], ref) < 1e-5


def test_forward_reads_nothing_back_after_the_first_call(monkeypatch):
    """Sequence lengths come from the token set's cache: later forwards call no .tolist() / .item()."""
    model = randomize(SLatFlowModel(tiny_flow_config(in_channels=8, out_channels=8)), seed=1).eval()
    coords = torch.cat([random_voxels(30, 6, seed=2), _copies(random_voxels(20, 6, seed=3), 2)[20:]])  # 30 + 20
    x = SparseTensor.from_coords(coords, torch.randn(len(coords), 8), 2)
    t, cond = torch.tensor([100.0, 900.0]), torch.randn(2, 3, 16)
    with torch.no_grad():
        first = model(x, t, cond).feats

        def forbidden(*args, **kwargs):
            raise AssertionError("host read inside the forward")

        monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
        monkeypatch.setattr(torch.Tensor, "item", forbidden)
        again = model(x.replace(x.feats.clone()), t, cond).feats
    assert torch.equal(first, again)


def test_graphed_call_on_cpu_is_a_plain_call():
    calls = []
    graphed = GraphedCall(lambda a, b: calls.append(1) or a * b + 1)
    a, b = torch.randn(3), torch.randn(3)
    for _ in range(3):
        assert torch.equal(graphed(a, b), a * b + 1)
    assert len(calls) == 3 and graphed.replays == 0


# ------------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 2])
def test_cuda_graph_replay_equals_eager_and_forward_is_sync_free(batch):
    cfg = tiny_flow_config(in_channels=8, out_channels=8)
    model = randomize(SLatFlowModel(cfg), seed=7).eval().cuda()
    coords = _copies(random_voxels(50, 6, seed=8), batch).cuda()
    template = SparseTensor.from_coords(coords, torch.zeros(len(coords), 8, device="cuda"), batch)
    cond = torch.randn(batch, 5, cfg.cond_channels, device="cuda")

    def forward(feats, t, condition):
        return model(template.replace(feats), t, condition).feats

    graphed = GraphedCall(forward)
    with torch.no_grad():
        forward(torch.randn(len(coords), 8, device="cuda"), torch.full((batch,), 500.0, device="cuda"), cond)
        torch.cuda.set_sync_debug_mode("error")
        try:  # after the first call a forward never waits on the device
            forward(torch.randn(len(coords), 8, device="cuda"), torch.full((batch,), 400.0, device="cuda"), cond)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for step in range(4):  # fresh inputs every call: eager warm-up, capture, then replays
            feats = torch.randn(len(coords), 8, device="cuda")
            t = torch.full((batch,), 1000.0 - 200 * step, device="cuda")
            expected = forward(feats, t, cond)
            got = graphed(feats, t, cond)
            assert relative_error(got, expected) < 1e-6
        assert graphed.replays == 3  # the capture call replays too
        kept = got.clone()
        graphed(torch.randn(len(coords), 8, device="cuda"), t, cond)
        assert torch.equal(got, kept)  # outputs are copies: a later replay does not overwrite them


@pytest.mark.gpu
def test_cuda_graph_replay_of_dense_model_equals_eager():
    cfg = tiny_flow_config()
    model = randomize(SparseStructureFlowModel(cfg), seed=9).eval().cuda()
    graphed = GraphedCall(model)
    with torch.no_grad():
        for step in range(3):
            x = torch.randn(2, 8, 4, 4, 4, device="cuda")
            t = torch.tensor([700.0 - step, 700.0 - step], device="cuda")
            cond = torch.randn(2, 5, cfg.cond_channels, device="cuda")
            assert relative_error(graphed(x, t, cond), model(x, t, cond)) < 1e-6
    assert graphed.replays == 2


@pytest.mark.gpu
def test_pipeline_with_cuda_graphs_equals_eager_pipeline(assets, tmp_path, monkeypatch):
    """The image-to-3D pipeline on a real image: sampling with graph replay gives the eager run's latents."""
    from safetensors.torch import load_file

    from omnivox.pipelines.image_to_3d import ImageTo3DPipeline
    from omnivox.pipelines.testing import make_test_pipeline

    from ..pipelines.conftest import RGBA_IMAGE

    made = []

    class Recording(GraphedCall):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr("omnivox.pipelines.base.GraphedCall", Recording)
    weights = make_test_pipeline(tmp_path / "weights")
    structure = [[x, y, 8 + (x + y) % 3] for x in range(8, 20) for y in range(10, 18)]
    latents = {}
    for graphs in (False, True):
        pipe = ImageTo3DPipeline.from_pretrained(weights, device="cuda", dtype=torch.float32)
        pipe.cuda_graphs = graphs
        pipe.cuda_graph_max_tokens = 10 ** 9
        pipe.run(assets / RGBA_IMAGE, seed=3, pipeline_type="1024_cascade", sparse_structure=structure,
                 save_intermediates=tmp_path / str(graphs))
        assert (sum(g.replays for g in made) > 0) == graphs  # the sampling stages really replayed graphs
        made.clear()
        latents[graphs] = {k: load_file(str(tmp_path / str(graphs) / f"{k}.safetensors"))["feats"]
                           for k in ("shape_latent", "material_latent")}
    for key in ("shape_latent", "material_latent"):
        assert relative_error(latents[True][key], latents[False][key]) < 1e-5, key
