"""A checkpoint written by the trainer goes into a pipeline folder unchanged and generates (issue #8)."""

import json
import shutil

import torch
from safetensors.torch import load_file

from omnivox.models import from_pretrained
from omnivox.pipelines.image_to_3d import ImageTo3DPipeline
from omnivox.pipelines.testing import make_test_pipeline
from omnivox.train.flow_trainers import FlowMatchingTrainer
from tests.pipelines.conftest import RGBA_IMAGE
from tests.train.test_flow import flow_config


class StructureLatents(torch.utils.data.Dataset):
    """Dense structure latents with precomputed condition tokens (random; only the hand-off is under test)."""

    def __init__(self, model, count: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        cfg = model.config
        shape = (cfg.in_channels, cfg.resolution, cfg.resolution, cfg.resolution)
        self.items = [{"x_0": torch.randn(shape, generator=g), "cond": torch.randn(6, cfg.cond_channels, generator=g)}
                      for _ in range(count)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    @staticmethod
    def collate_fn(samples, split_size=None):
        pack = {"x_0": torch.stack([s["x_0"] for s in samples]), "cond": torch.stack([s["cond"] for s in samples])}
        return [pack] if split_size else pack


def test_trained_structure_flow_loads_into_the_pipeline_and_generates(assets, tmp_path):
    weights = make_test_pipeline(tmp_path / "weights")
    role_path = json.loads((weights / "pipeline.json").read_text())["args"]["models"]["sparse_structure_flow_model"]
    released = from_pretrained(weights / role_path)                    # bf16 blocks, as released
    original = {k: v.clone() for k, v in released.state_dict().items()}

    config = flow_config(steps=3, batch_size=2, batch_split=1, mix_precision_mode="inflat_all",
                         mix_precision_dtype="bfloat16", optimizer={"name": "AdamW", "args": {"lr": 1e-2}})
    trainer = FlowMatchingTrainer({"denoiser": released}, StructureLatents(released), config, tmp_path / "run",
                                  device="cpu", tensorboard=False, progress=False)
    trainer.run()
    trained = tmp_path / "run" / "ckpts" / "denoiser_step0000003"
    for suffix in (".json", ".safetensors"):                           # the official layout, copied as is
        shutil.copy(trained.with_suffix(suffix), (weights / role_path).with_suffix(suffix))

    pipe = ImageTo3DPipeline.from_pretrained(weights, device="cpu")
    (asset,) = pipe.run(assets / RGBA_IMAGE, seed=0, pipeline_type="512")
    assert len(asset.faces) > 0 and asset.resolution == 512

    loaded = pipe.models.get("sparse_structure_flow_model").state_dict()
    stored = load_file(trained.with_suffix(".safetensors"))           # float32 masters (CPU runs them as float32)
    assert set(loaded) == set(stored) == set(original)
    assert all(torch.equal(loaded[k].cpu(), stored[k].to(loaded[k].dtype)) for k in loaded)
    assert any(not torch.equal(loaded[k].cpu(), original[k].to(loaded[k].dtype)) for k in loaded)  # the pipeline runs the trained weights
