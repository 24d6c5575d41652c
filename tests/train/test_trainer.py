"""The base `Trainer` on a tiny regression model: accumulation, kill + resume bit-exactness, files, errors."""

import json

import pytest
import torch
from torch import nn

from omnivox.train import ConfigError, Trainer, TrainerConfig
from omnivox.train.checkpoint import find_latest_step, read_safetensors


class Regression(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.randn(4, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Crash(RuntimeError):
    pass


class RegressionTrainer(Trainer):
    crash_at = None

    def training_losses(self, batch):
        if self.crash_at is not None and self.step == self.crash_at:
            raise Crash(f"simulated kill at step {self.step}")
        pred = self.models["net"](batch["x"])
        noise = 0.01 * torch.randn(pred.shape, generator=self.rng)  # draws must repeat on resume
        loss = ((pred + noise - batch["y"]) ** 2).mean()
        return loss, {"mse": float(loss.detach())}


def make(out, steps, crash_at=None, **overrides):
    torch.manual_seed(0)
    args = dict(max_steps=steps, batch_size=4, batch_split=2, ema_rate=[0.9, 0.99], i_save=3, i_log=2,
                optimizer={"name": "AdamW", "args": {"lr": 1e-2, "weight_decay": 0.01}},
                grad_clip={"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0, "buffer_size": 3}},
                mix_precision_mode=None, num_workers=0)
    args.update(overrides)
    trainer = RegressionTrainer({"net": nn.Linear(4, 2)}, Regression(), TrainerConfig(**args), out,
                                device="cpu", tensorboard=False, progress=False)
    trainer.crash_at = crash_at
    return trainer


def test_loss_falls(tmp_path):
    trainer = make(tmp_path, 60, i_save=1000, ema_rate=0.9, grad_clip=None,
                   optimizer={"name": "Adam", "args": {"lr": 0.1}})
    trainer.run()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    losses = [json.loads(line.split(": ", 1)[1])["loss"] for line in lines]
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.1 * sum(losses[:5]) / 5


def test_kill_and_resume_is_bit_exact(tmp_path):
    straight = make(tmp_path / "a", 8)
    straight.run()
    killed = make(tmp_path / "b", 8, crash_at=7)  # dies in step 8; last checkpoint at step 6
    with pytest.raises(Crash):
        killed.run()
    assert find_latest_step(tmp_path / "b" / "ckpts") == 6
    resumed = make(tmp_path / "b", 8)
    assert resumed.step == 6
    resumed.run()
    assert resumed.step == 8
    for a, b in zip(straight.precision.master_params, resumed.precision.master_params):
        assert torch.equal(a, b)
    for rate in (0.9, 0.99):
        for a, b in zip(straight.ema.shadows[rate], resumed.ema.shadows[rate]):
            assert torch.equal(a, b)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k]))
    assert straight.clipper.state_dict() == resumed.clipper.state_dict()
    # the loss trace of steps 7-8 repeats exactly
    def trace(path):
        lines = [line for line in path.read_text().splitlines() if line.split(":")[0] in ("7", "8")]
        return [{k: v for k, v in json.loads(line.split(": ", 1)[1]).items() if k != "time/elapsed"}
                for line in lines]
    assert trace(tmp_path / "a" / "log.txt") == trace(tmp_path / "b" / "log.txt")


def test_checkpoint_files_hold_master_and_ema(tmp_path):
    trainer = make(tmp_path, 3)
    trainer.run()
    ckpts = tmp_path / "ckpts"
    weights = read_safetensors(ckpts / "net_step0000003.safetensors")
    assert torch.equal(weights["weight"], trainer.unwrap("net").weight.detach())
    ema = read_safetensors(ckpts / "net_ema0.9_step0000003.safetensors")
    assert torch.equal(ema["bias"], trainer.ema.shadows[0.9][1])
    assert json.loads((ckpts / "net_step0000003.json").read_text())["name"] == "Linear"
    misc = json.loads((ckpts / "misc_step0000003.json").read_text())
    assert misc["step"] == 3 and misc["data"] == {"epoch": 0, "position": 3}
    assert not list(ckpts.glob("*.tmp")) and not list(ckpts.glob(".*"))


def test_accumulation_equals_one_big_batch(tmp_path):
    """batch_split=2 over equal halves gives the gradient of batch_split=1 (spec 8.21)."""
    class Plain(RegressionTrainer):
        def training_losses(self, batch):
            loss = ((self.models["net"](batch["x"]) - batch["y"]) ** 2).mean()
            return loss, {}
    grads = []
    for split in (1, 2):
        torch.manual_seed(0)
        cfg = TrainerConfig(max_steps=1, batch_size=4, batch_split=split, mix_precision_mode=None, num_workers=0,
                            optimizer={"name": "SGD", "args": {"lr": 0.0}})
        trainer = Plain({"net": nn.Linear(4, 2).double()}, Regression(), cfg, tmp_path / str(split),
                        device="cpu", tensorboard=False, progress=False)
        trainer.dataset.x, trainer.dataset.y = trainer.dataset.x.double(), trainer.dataset.y.double()
        trainer.train_step(trainer.stream.next())
        grads.append(trainer.unwrap("net").weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="batch_split=3 does not divide"):
        TrainerConfig(max_steps=1, batch_size=4, batch_split=3).per_process_batch(1)
    with pytest.raises(ConfigError, match="exactly one of batch_size"):
        TrainerConfig(max_steps=1)
    with pytest.raises(ConfigError, match="mix_precision_dtype"):
        TrainerConfig(max_steps=1, batch_size=2, mix_precision_dtype="fp8")


def test_param_stats_are_logged(tmp_path):
    trainer = make(tmp_path, 1, log_param_stats=True, i_log=1)
    trainer.run()
    logs = json.loads((tmp_path / "log.txt").read_text().split(": ", 1)[1])
    assert logs["status/param_norm/net.weight"] > 0 and logs["status/grad_norm/net.bias"] > 0
