"""The pipeline on a CUDA device (batched guidance, offloading) agrees with the CPU run (tiny pipeline)."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omnivox.pipelines.image_to_3d import ImageTo3DPipeline

from .conftest import RGBA_IMAGE


@pytest.mark.gpu
@pytest.mark.parametrize("smallest_budget", [False, True])
def test_cuda_run_matches_cpu_run(tiny_weights, assets, tmp_path, smallest_budget):
    structure = np.array([[x, y, 8 + (x + y) % 3] for x in range(8, 20) for y in range(10, 18)])
    latents = {}
    for device in ("cpu", "cuda"):
        max_memory = None
        if smallest_budget:  # the least the planner accepts: offloaded models, the smallest chunks
            probe = ImageTo3DPipeline.from_pretrained(tiny_weights, device=device, dtype=torch.float32)
            max_memory = probe.plan("1024_cascade", max_memory="1MB").required_budget_bytes
            del probe
        # Memory the process holds for others (earlier tests, this tensor) is outside the pipeline's budget.
        held = torch.empty(64 << 20, dtype=torch.uint8, device="cuda") if device == "cuda" else None
        pipe = ImageTo3DPipeline.from_pretrained(tiny_weights, device=device, dtype=torch.float32,
                                                 max_memory=max_memory)
        assert pipe.batch_guidance == (device == "cuda")
        output = pipe.run(assets / RGBA_IMAGE, seed=11, pipeline_type="1024_cascade", sparse_structure=structure,
                          save_intermediates=tmp_path / device)
        (asset,) = output
        assert len(asset.faces) > 0
        if device == "cuda" and max_memory:
            assert output.plan.offload
            assert all(p.device.type == "cpu" for m in pipe.models._models.values() for p in m.parameters())
        del held
        latents[device] = {k: load_file(str(tmp_path / device / f"{k}.safetensors")) for k in
                           ("condition", "shape_latent", "material_latent")}
    cpu, gpu = latents["cpu"], latents["cuda"]
    for key, name in (("condition", "cond_1024"), ("shape_latent", "feats"), ("material_latent", "feats")):
        a, b = gpu[key][name].double(), cpu[key][name].double()
        assert a.shape == b.shape
        assert float((a - b).norm() / b.norm()) < 2e-3, key


@pytest.mark.gpu
@pytest.mark.parametrize("pipeline_type", ["512", "1024_cascade"])
def test_every_sampling_stage_is_captured_as_cuda_graphs(tiny_weights, pipeline_type):
    """No stage falls back to eager calls: a host sync inside a flow forward (for instance comparing the
    texture model's concat_cond coordinates) makes the capture fail, with a warning and the eager speed."""
    import warnings

    from PIL import Image

    from omnivox.pipelines import runtime as cuda_graphs

    replays = []
    original = cuda_graphs.GraphedCall.__call__

    def counting(self, *args):
        before = self.replays
        out = original(self, *args)
        replays.append(self.replays - before)
        return out

    rng = np.random.default_rng()
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA")
    pipe = ImageTo3DPipeline.from_pretrained(tiny_weights, device="cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="CUDA-graph capture failed")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cuda_graphs.GraphedCall, "__call__", counting)
            pipe.run(image, seed=3, pipeline_type=pipeline_type,
                     sampler_params={"shape_slat": {"steps": 6}, "tex_slat": {"steps": 6}})
    # Each token set's first call per batch shape runs eagerly and the rest replay; a stage whose capture
    # failed would replay none of its 6 calls.
    assert len(replays) >= 12 and sum(replays) >= len(replays) * 2 // 3, replays


@pytest.mark.gpu
def test_a_cuda_run_leaves_no_tensors_in_reference_cycles(tiny_weights):
    from PIL import Image

    from .conftest import tensors_left_in_cycles

    image = Image.fromarray(np.random.default_rng().integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA")
    pipe = ImageTo3DPipeline.from_pretrained(tiny_weights, device="cuda")
    for pipeline_type in ("512", "1024_cascade"):
        assert tensors_left_in_cycles(lambda: pipe.run(image, seed=2, pipeline_type=pipeline_type)) == []
