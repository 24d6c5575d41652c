"""Two processes on CPU (gloo), DDP or FSDP2, equal one process with the doubled batch (spec training.md 8.22)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from omnivox.train.distributed import DistInfo
from omnivox.train.flow_trainers import FlowMatchingTrainer
from tests.train.flow_data import FlowDataset, tiny_dinov3
from tests.train.test_flow import flow_config, tiny_denoiser


class ContiguousDataset(FlowDataset):
    """Without ``loads``: each process takes a contiguous slice of the global batch, like micro-batches do."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.loads


def _train(samples, out, rank, world, split, steps, parallel="ddp"):
    dataset = ContiguousDataset(samples, "shape", encoder=tiny_dinov3())
    config = flow_config(steps=steps, batch_size=4, batch_split=split, ema_rate=0.9,
                         grad_clip={"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0}},
                         mix_precision_mode=None, i_ddpcheck=1, parallel_mode=parallel)
    trainer = FlowMatchingTrainer({"denoiser": tiny_denoiser("shape")}, dataset, config, out, device="cpu",
                                  dist_info=DistInfo(rank, world, rank), tensorboard=False, progress=False)
    trainer.run()
    return trainer


def _worker(rank, world, init_file, samples, out, steps, parallel):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _train(samples, out, rank, world, 1, steps, parallel)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_with_double_batch(parallel, flow_samples, tmp_path):
    steps = 3
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), flow_samples, str(tmp_path / "ddp"), steps, parallel),
             nprocs=2)
    _train(flow_samples, tmp_path / "one", 0, 1, 2, steps)
    from omnivox.train.checkpoint import read_safetensors
    ddp = read_safetensors(tmp_path / "ddp" / "ckpts" / f"denoiser_step{steps:07d}.safetensors")
    one = read_safetensors(tmp_path / "one" / "ckpts" / f"denoiser_step{steps:07d}.safetensors")
    initial = tiny_denoiser("shape").state_dict()
    moved = 0
    for key in one:
        delta = (one[key] - initial[key]).double()
        err = (ddp[key] - one[key]).double().norm()
        assert err <= 1e-5 * max(delta.norm(), 1e-12) + 1e-7, key
        moved += int(delta.norm() > 0)
    assert moved > 10  # the comparison is about weights that actually trained
    def log(run):
        return [line.split(": ", 1)[1] for line in (run / "log.txt").read_text().splitlines()]
    import json
    for a, b in zip(log(tmp_path / "ddp"), log(tmp_path / "one")):
        la, lb = json.loads(a)["loss"], json.loads(b)["loss"]
        assert abs(la - lb) <= 1e-5 * abs(lb)
