"""Flow-model training throughput on one GPU: the released 1.3B DiTs at realistic token counts.

    python bench/bench_train.py --out OUT [--steps 6] [--warmup 2]

For each case the full `FlowMatchingTrainer.train_step` runs (bf16 autocast, float32 AdamW master weights,
adaptive clipping, EMA 0.9999, ``batch_split`` micro-batches), with and without activation checkpointing of
all 30 blocks. Data are synthetic (random normalised latents on random voxel sets, random condition tokens of
DINOv3 shape 1029 x 1024): the DINOv3 forward pass is not included. Reports samples/s, tokens/s (latent
tokens), step time and peak memory as JSON lines, and ``OUT/train_flow.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from omnivox.models import FlowConfig, SLatFlowModel, SparseStructureFlowModel
from omnivox.sparse import SparseTensor
from omnivox.train.flow_trainers import FlowMatchingTrainer, FlowTrainerConfig

RUNS = Path("/tmp/omnivox_bench_train")  # run folders (not returned from the device)
COND_TOKENS = 1029  # DINOv3 ViT-L/16 at 512 px: 1 + 4 registers + 32 x 32 patches


class SyntheticLatents(torch.utils.data.Dataset):
    """``count`` samples: sparse latents of ``tokens`` voxels in a 32^3 (or 64^3) grid, or dense 8 x 16^3."""

    def __init__(self, count: int, tokens: int, grid: int, dense: bool) -> None:
        self.count, self.tokens, self.grid, self.dense = count, tokens, grid, dense

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        cond = torch.randn(COND_TOKENS, 1024, generator=g)
        if self.dense:
            return {"x_0": torch.randn(8, 16, 16, 16, generator=g), "cond": cond}
        cells = torch.randperm(self.grid ** 3, generator=g)[:self.tokens].sort().values
        xyz = torch.stack([cells // self.grid ** 2, (cells // self.grid) % self.grid, cells % self.grid], 1)
        return {"x_0": SparseTensor.from_batch_list([xyz.int()], [torch.randn(self.tokens, 32, generator=g)]),
                "cond": cond}


def run_case(name: str, dense: bool, tokens: int, grid: int, batch: int, split: int, checkpoint: bool,
             steps: int, warmup: int, out: Path) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    config = FlowConfig(resolution=16 if dense else grid, in_channels=8 if dense else 32,
                        out_channels=8 if dense else 32, dtype="float32")
    with torch.device("cuda"):
        model = SparseStructureFlowModel(config) if dense else SLatFlowModel(config)
    trainer_config = FlowTrainerConfig(
        max_steps=steps + warmup, batch_size=batch, batch_split=split, mix_precision_mode="amp",
        mix_precision_dtype="bfloat16", ema_rate=[0.9999], num_workers=4,
        optimizer={"name": "AdamW", "args": {"lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.01}},
        grad_clip={"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0, "clip_percentile": 95}},
        t_schedule={"name": "uniform"}, activation_checkpointing=1.0 if checkpoint else None,
        i_log=10**6, i_save=10**6, i_sample=10**6)
    dataset = SyntheticLatents(batch * (steps + warmup), tokens, grid, dense)
    trainer = FlowMatchingTrainer({"denoiser": model}, dataset, trainer_config, RUNS / name, device="cuda",
                                  resume=False, tensorboard=False, progress=False)
    result = {"case": name, "dense": dense, "tokens_per_sample": 4096 if dense else tokens, "batch": batch,
              "batch_split": split, "activation_checkpointing": checkpoint,
              "params": sum(p.numel() for p in model.parameters())}
    try:
        for _ in range(warmup):
            trainer.train_step(trainer.stream.next())
            trainer.step += 1
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            micro = trainer.stream.next()
            torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step(micro)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            trainer.step += 1
        step_s = sorted(times)[len(times) // 2]
        result.update(step_s=step_s, samples_per_s=batch / step_s,
                      tokens_per_s=batch * result["tokens_per_sample"] / step_s,
                      peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    except torch.OutOfMemoryError:
        result.update(oom=True, peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    del trainer, model
    torch.cuda.empty_cache()
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    cases = [
        # (name, dense, tokens/sample, grid, global batch, batch_split)
        ("shape512_ckpt", False, 4096, 32, 8, 2),   # released 512 recipe: 8/GPU, split 2 -> 4 x 4096 tokens
        ("shape512_nockpt", False, 4096, 32, 8, 2),
        ("shape512_nockpt_split4", False, 4096, 32, 8, 4),
        ("shape1024_ckpt", False, 16384, 64, 2, 1),  # ft1024 recipe: 2/GPU, 16k tokens each
        ("ss_ckpt", True, 4096, 16, 8, 4),           # SS flow: 8/GPU, split 4
        ("ss_nockpt", True, 4096, 16, 8, 4),
    ]
    results = []
    for name, dense, tokens, grid, batch, split in cases:
        results.append(run_case(name, dense, tokens, grid, batch, split, "nockpt" not in name,
                                args.steps, args.warmup, args.out))
        (args.out / "train_flow.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
