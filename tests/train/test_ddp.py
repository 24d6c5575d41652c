"""Two processes on CPU (gloo), DDP or FSDP2, equal one process with the doubled batch (spec training.md 8.22).

Both runs make every per-process term with the same arithmetic: the same micro-batches, noise seeds and one
intra-op thread. The reference runs on one thread too: with two, its GEMMs add their products in another order
than the workers' and the runs drift apart by rounding that no tolerance derived from the sums compared here
bounds (this test used a fixed 1e-5 on the weights after three AdamW steps, and missed it on a loaded machine).
What differs is only how the processes' gradients are added, so the averaged gradients must agree within
`reordered_sum_tolerance`.
"""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from omnivox.train.checkpoint import read_safetensors
from omnivox.train.distributed import DistInfo
from omnivox.train.flow_trainers import FlowMatchingTrainer
from tests.train.flow_data import FlowDataset, tiny_dinov3
from tests.train.test_flow import flow_config, tiny_denoiser
from tests.train.tolerances import reordered_sum_tolerance

WORLD = 2
STEPS = 3


class ContiguousDataset(FlowDataset):
    """Without ``loads``: each process takes a contiguous slice of the global batch, like micro-batches do."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.loads


class RecordingClipper:
    """Stands in for the trainer's gradient clipper: keeps the averaged gradient of every step as the clipper
    receives it (after DDP's all-reduce or FSDP's reduce-scatter, before clipping), then clips."""

    def __init__(self, clipper):
        self.clipper = clipper
        self.steps = []

    def __call__(self, params):
        params = list(params)
        # FSDP holds gradient shards; full_tensor() gathers them (a collective, which every rank reaches here).
        self.steps.append([(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                           for p in params])
        return self.clipper(params)

    def __getattr__(self, name):  # threshold, state_dict, ... of the real clipper
        return getattr(self.clipper, name)


def _train(samples, out, rank, world, split, parallel="ddp", terms=None):
    """Train STEPS steps; returns the per-step averaged gradients (rank 0's view). With `terms` (one process),
    also appends each step's per-micro-batch gradient contributions: terms[step][param] = [t_0, t_1, ...]."""
    dataset = ContiguousDataset(samples, "shape", encoder=tiny_dinov3())
    config = flow_config(steps=STEPS, batch_size=4, batch_split=split, ema_rate=0.9,
                         grad_clip={"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0}},
                         mix_precision_mode=None, i_ddpcheck=1, parallel_mode=parallel)
    trainer = FlowMatchingTrainer({"denoiser": tiny_denoiser("shape")}, dataset, config, out, device="cpu",
                                  dist_info=DistInfo(rank, world, rank), tensorboard=False, progress=False)
    trainer.clipper = recorder = RecordingClipper(trainer.clipper)
    if terms is not None:
        params = trainer.precision.params
        # float32 training: the gradients land on the weights themselves, where the hooks below see them
        assert all(p is m for p, m in zip(params, trainer.precision.master_params))
        for i, p in enumerate(params):
            # A leaf's hook sees each backward's contribution before it is accumulated into .grad.
            p.register_hook(lambda g, i=i: terms[len(recorder.steps)][i].append(g.clone()))
        terms.extend([[] for _ in params] for _ in range(STEPS))
    trainer.run()
    return recorder.steps, [f"{key}.{name}" for key, name in trainer._param_names]


def _worker(rank, world, init_file, samples, out, parallel):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        grads, _ = _train(samples, out, rank, world, 1, parallel)
        if rank == 0:
            torch.save(grads, f"{out}/grads.pt")
    finally:
        dist.destroy_process_group()


def _reference(samples, out):
    """One process, batch_split = WORLD, one intra-op thread like the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        terms = []
        grads, names = _train(samples, out, 0, 1, WORLD, terms=terms)
    finally:
        torch.set_num_threads(threads)
    return grads, terms, names


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_with_double_batch(parallel, flow_samples, tmp_path):
    (tmp_path / "ddp").mkdir()
    mp.spawn(_worker, args=(WORLD, str(tmp_path / "init"), flow_samples, str(tmp_path / "ddp"), parallel),
             nprocs=WORLD)
    one_grads, one_terms, names = _reference(flow_samples, tmp_path / "one")
    ddp_grads = torch.load(tmp_path / "ddp" / "grads.pt", weights_only=True)
    assert len(ddp_grads) == len(one_grads) == STEPS

    for step in range(STEPS):
        for name, got, want, terms in zip(names, ddp_grads[step], one_grads[step], one_terms[step], strict=True):
            assert len(terms) == WORLD, (step, name)  # every micro-batch reached every parameter
            tolerance = reordered_sum_tolerance(sum(t.abs() for t in terms), WORLD, torch.float32)
            excess = ((got - want).abs() - tolerance).max()
            assert excess <= 0, f"step {step + 1}, {name}: {excess:.3g} beyond the reordering bound"
            if step == 0 and want.abs().max() > 0:
                # The bound still catches the bugs it is there for: the sum of the processes' gradients instead of
                # their mean (2x), or each process stepping on its own gradient (no all-reduce at all).
                for wrong in (2 * want, WORLD * terms[0]):
                    assert ((wrong - want).abs() > tolerance).any(), name

    # The same gradients give the same steps: the optimiser, the clipper and the EMA then do the same arithmetic in
    # both runs, and any reduction they do over the processes adds two terms (a + b == b + a exactly).
    tag = f"step{STEPS:07d}"
    initial = tiny_denoiser("shape").state_dict()
    for kind in ("denoiser", "denoiser_ema0.9"):
        ddp = read_safetensors(tmp_path / "ddp" / "ckpts" / f"{kind}_{tag}.safetensors")
        one = read_safetensors(tmp_path / "one" / "ckpts" / f"{kind}_{tag}.safetensors")
        assert ddp.keys() == one.keys()
        for key in one:
            assert torch.equal(ddp[key], one[key]), (kind, key)
        assert sum(not torch.equal(one[key], initial[key]) for key in one) > 10  # weights that actually trained

    def logs(run):
        return [json.loads(line.split(": ", 1)[1]) for line in (run / "log.txt").read_text().splitlines()]
    ddp_logs, one_logs = logs(tmp_path / "ddp"), logs(tmp_path / "one")
    assert len(ddp_logs) == len(one_logs) == STEPS
    for a, b in zip(ddp_logs, one_logs):
        assert (a["loss"], a["status/grad_norm"]) == (b["loss"], b["status/grad_norm"])
