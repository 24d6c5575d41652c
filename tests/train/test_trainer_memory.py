"""Activation checkpointing and the elastic memory controller (spec training.md 1.9, 8.20)."""

import torch

from omnivox.models import FlowConfig, SLatFlowModel
from omnivox.sparse import SparseTensor
from omnivox.train.memory import LinearMemoryController, set_checkpointed_blocks


def _model_and_input():
    torch.manual_seed(0)
    model = SLatFlowModel(FlowConfig(resolution=8, in_channels=4, out_channels=4, model_channels=32, cond_channels=8,
                                     num_blocks=4, num_heads=2, mlp_ratio=2.0, dtype="float32"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))  # non-zero output layer and modulation
    g = torch.Generator().manual_seed(1)
    cells = torch.randperm(512, generator=g)[:40].sort().values
    xyz = torch.stack([cells // 64, (cells // 8) % 8, cells % 8], 1).int()
    feats = [torch.randn(25, 4, generator=g), torch.randn(15, 4, generator=g)]
    x = SparseTensor.from_batch_list([xyz[:25], xyz[25:]], feats)
    return model, x, torch.tensor([300.0, 700.0]), torch.randn(2, 5, 8, generator=g)


def test_checkpointed_blocks_give_identical_outputs_and_gradients():
    model, x, t, cond = _model_and_input()
    results = []
    for count in (0, 1, 4):
        assert set_checkpointed_blocks(model, count) == count
        model.zero_grad()
        out = model(x, t, cond).feats
        out.square().sum().backward()
        results.append((out.detach().clone(), [p.grad.clone() for p in model.parameters()]))
    keys = list(model.state_dict())
    set_checkpointed_blocks(model, 0)
    assert list(model.state_dict()) == keys  # names unchanged
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


def test_controller_fits_memory_and_lowers_the_ratio_with_tokens():
    controller = LinearMemoryController(num_blocks=30, target_ratio=0.75, max_mem_ratio_start=0.5, update_every=4,
                                        available_memory=80.0)
    ratios = [controller.ratio_for(1000) for _ in range(20)]
    assert all(0 <= r <= 0.5 for r in ratios) and len(set(ratios)) > 1  # exploring before the first fit
    # peak = 0.002 GiB per kept token + 10 GiB
    for tokens, checkpointed in ((1000, 0), (4000, 15), (8000, 30), (2000, 6)):
        kept = 1 - checkpointed / 30
        controller.record(0.002 * tokens * kept + 10.0, tokens, checkpointed)
    assert abs(controller.k - 0.002) < 1e-9 and abs(controller.b - 10.0) < 1e-6
    assert abs(controller.max_ratio - 0.6) < 1e-12
    chosen = [controller.ratio_for(n) for n in (10_000, 20_000, 40_000, 80_000)]
    assert chosen == sorted(chosen, reverse=True) and chosen[-1] < chosen[0]
    # (80 * 0.75 - 10) / (0.002 * 80000) = 0.3125 kept -> 21 of 30 blocks checkpointed
    assert abs(chosen[-1] - 0.3125) < 1e-9 and controller.blocks_to_checkpoint(chosen[-1]) == 21
    restored = LinearMemoryController(num_blocks=30, available_memory=80.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.ratio_for(80_000) == chosen[-1]
