"""CUDA: bf16 flow training resumes bit-exactly after a kill (device generators, CUDA RNG state saved)."""

import pytest
import torch

from omnivox.models import FlowConfig, SLatFlowModel
from omnivox.sparse import SparseTensor
from omnivox.train.flow_trainers import FlowMatchingTrainer, FlowTrainerConfig

pytestmark = pytest.mark.gpu


class Latents(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        cells = torch.randperm(512, generator=g)[:60 + 10 * i].sort().values
        xyz = torch.stack([cells // 64, (cells // 8) % 8, cells % 8], 1).int()
        return {"x_0": SparseTensor.from_batch_list([xyz], [torch.randn(len(xyz), 8, generator=g)]),
                "cond": torch.randn(6, 16, generator=g)}


class Killed(RuntimeError):
    pass


class KillableTrainer(FlowMatchingTrainer):
    kill_at = None

    def training_losses(self, batch):
        if self.step == self.kill_at:
            raise Killed()
        return super().training_losses(batch)


def _trainer(out, kill_at=None):
    torch.manual_seed(0)
    model = SLatFlowModel(FlowConfig(resolution=8, in_channels=8, out_channels=8, model_channels=64, cond_channels=16,
                                     num_blocks=2, num_heads=2, mlp_ratio=2.0))
    config = FlowTrainerConfig(max_steps=8, batch_size=4, batch_split=2, mix_precision_mode="amp",
                               mix_precision_dtype="bfloat16", ema_rate=[0.9], i_save=4, i_log=1, num_workers=0,
                               optimizer={"name": "AdamW", "args": {"lr": 1e-3}}, t_schedule={"name": "uniform"},
                               grad_clip={"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0}},
                               activation_checkpointing=0.5)
    trainer = KillableTrainer({"denoiser": model}, Latents(), config, out, device="cuda", tensorboard=False,
                              progress=False)
    trainer.kill_at = kill_at
    return trainer


def test_cuda_kill_and_resume_is_bit_exact(tmp_path):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # Bit-exact comparisons need deterministic kernels (spec 8.16): the sparse model's per-sample broadcast
    # backpropagates through index_add_, whose default CUDA kernel adds with atomics; cuDNN attention's backward
    # is not deterministic either, so attention runs on the math kernel.
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            straight = _trainer(tmp_path / "a")
            straight.run()
            killed = _trainer(tmp_path / "b", kill_at=6)
            with pytest.raises(Killed):
                killed.run()
            resumed = _trainer(tmp_path / "b")
            assert resumed.step == 4
            resumed.run()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    for a, b in zip(straight.precision.master_params, resumed.precision.master_params):
        assert a.is_cuda and torch.equal(a, b)
    for a, b in zip(straight.ema.shadows[0.9], resumed.ema.shadows[0.9]):
        assert torch.equal(a, b)
