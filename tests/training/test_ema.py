"""EMA of the weights: the average's values, what validation and best.pt use,
buffers copied, resume bit for bit (with the balanced sampler too), and `train --ema`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fbdl_fast.checkpoint import CheckpointError, load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.data import PostsDataset, balanced_sample_weights, load_posts, make_loader
from fbdl_fast.training.loading import load_run
from fbdl_fast.training.trainer import BEST_CHECKPOINT, LAST_CHECKPOINT, Trainer
from test_train import assert_same_state
from tiny_run import (
    Bag,
    bag_config,
    tiny_model_args,
    train_refusal,
    train_two_ranks_and_one,
    write_posts_csv,
)


class CountingBag(Bag):
    """Bag with dropout and a buffer that counts training forwards (a BatchNorm-like state)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        mask = attention_mask.unsqueeze(-1).float()  # (B, L, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(self.drop(pooled))


def _loaders(balanced: bool = False) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(2)
    labels = [0] * 30 + [1] * 6 + [2] * 4  # skewed, for the balanced sampler
    ids = [
        (
            1
            + 6 * c
            + torch.randint(0, 6, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)
        ).numpy()
        for c in labels
    ]
    train = PostsDataset(ids, labels)
    weights = balanced_sample_weights(labels) if balanced else None
    val = PostsDataset(ids[::3], labels[::3])
    return make_loader(train, 8, True, seed=5, weights=weights), make_loader(val, 8, False)


def _trainer(model: nn.Module, run_dir: Any = None, **overrides: Any) -> Trainer:
    config = bag_config(ema_decay=0.75, **overrides)
    return Trainer(model, config, device="cpu", run_dir=run_dir, progress=False)


def _fresh(model_class: type[nn.Module] = Bag) -> nn.Module:
    torch.manual_seed(0)
    return model_class()


def test_ema_follows_the_recurrence_after_every_step() -> None:
    """e_1 = w_1, e_k = d e_(k-1) + (1 - d) w_k over the weights after each optimizer step; the
    buffers are the model's own, not averaged."""
    train, val = _loaders()
    trainer = _trainer(_fresh(CountingBag), max_epochs=1)
    after: list[dict[str, torch.Tensor]] = []
    trainer.optimizer.register_step_post_hook(
        lambda *_: after.append(
            {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        )
    )
    trainer.fit(train, val)
    assert len(after) == len(train) == 5 and int(trainer.ema.n_averaged) == 5
    expected = after[0]
    for weights in after[1:]:
        expected = {k: 0.75 * expected[k] + 0.25 * weights[k] for k in expected}
    for name, value in trainer.ema.module.named_parameters():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
        assert not torch.equal(value, dict(trainer.model.named_parameters())[name])
    assert int(trainer.ema.module.calls) == int(trainer.model.calls) == 5  # copied


def test_validation_and_best_checkpoint_use_the_average(tmp_path: Path) -> None:
    train, val = _loaders()
    trainer = _trainer(_fresh(), tmp_path, max_epochs=2)
    history = trainer.fit(train, val)
    # The validation the history holds is the average's, on its own weights.
    plain = Trainer(Bag(), bag_config(), device="cpu", progress=False)
    plain.model.load_state_dict(trainer.ema.module.state_dict())
    assert history.val_losses[-1] == plain.evaluate(val)["loss"]
    assert trainer.evaluate(val)["loss"] == history.val_losses[-1]
    raw = Trainer(trainer.model, bag_config(), device="cpu", progress=False).evaluate(val)
    assert raw["loss"] != history.val_losses[-1]
    best, last = (
        load_checkpoint(tmp_path / BEST_CHECKPOINT),
        load_checkpoint(tmp_path / LAST_CHECKPOINT),
    )
    assert best["weights"] == "ema" and best["epoch"] == history.best_epoch == 2
    for name, tensor in trainer.ema.module.state_dict().items():
        assert torch.equal(best["model"][name], tensor), name
        assert torch.equal(last["ema"]["model"][name], tensor), name
        assert torch.equal(last["model"][name], trainer.model.state_dict()[name]), name
    # evaluate/predict load the validated weights: best.pt's model, last.pt's average.
    for path in (tmp_path / BEST_CHECKPOINT, tmp_path / LAST_CHECKPOINT):
        other = _trainer(Bag())
        other.load_checkpoint(path, model_only=True)
        assert other.evaluate(val)["loss"] == history.val_losses[-1], path.name


def test_resume_with_ema_and_balanced_sampler_is_exact(tmp_path: Path) -> None:
    """2 epochs == 1 epoch, a crash, a new Trainer resuming from last.pt: weights, average,
    histories and last.pt bit for bit (dropout draws and the sampler's draws included)."""
    train, val = _loaders(balanced=True)
    whole = _trainer(_fresh(CountingBag), tmp_path / "whole")
    whole.fit(train, val)

    crashed_model = _fresh(CountingBag)
    calls = {"n": 0}

    def crash(module: nn.Module, args: Any) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] > len(train):  # the first batch of epoch 2
                raise KeyboardInterrupt("simulated crash")

    crashed_model.register_forward_pre_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        _trainer(crashed_model, tmp_path / "run").fit(train, val)
    torch.rand(100)  # the global RNG moves on: only the checkpoint's state restores it
    resumed = _trainer(_fresh(CountingBag), tmp_path / "run")
    history = resumed.fit(train, val, resume_from=tmp_path / "run" / LAST_CHECKPOINT)
    timeless = {"epoch_times": []}
    assert dataclasses.replace(history, **timeless) == dataclasses.replace(
        whole.history, **timeless
    )
    assert_same_state(resumed.state_dict(), whole.state_dict())
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        assert_same_state(
            load_checkpoint(tmp_path / "run" / name), load_checkpoint(tmp_path / "whole" / name)
        )


def test_resuming_a_run_without_ema_is_refused(tmp_path: Path) -> None:
    train, val = _loaders()
    plain = Trainer(_fresh(), bag_config(max_epochs=1), device="cpu", run_dir=tmp_path)
    plain.fit(train, val)
    with pytest.raises(CheckpointError, match=r"has no EMA of the weights, but this run keeps"):
        _trainer(_fresh()).fit(train, val, resume_from=tmp_path / LAST_CHECKPOINT)


def test_ema_decay_is_checked() -> None:
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"ema_decay=.* expected None or a number in \(0, 1\)"):
            bag_config(ema_decay=bad)


def test_train_ema_cli_records_it_and_evaluates_the_average(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_posts_csv(tmp_path / "posts.csv", 120, seed=3)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(run), *tiny_model_args(), "--quiet"]
    assert main([*argv, "--epochs", "2", "--ema", "0.9", "--threads", "1"]) == 0
    capsys.readouterr()
    meta = json.loads((run / "config.json").read_text())
    assert meta["model_config"]["ema_decay"] == 0.9 and meta["training"]["ema"] == 0.9
    last = load_checkpoint(run / LAST_CHECKPOINT)
    assert last["ema"]["n_averaged"] == last["global_step"] > 0
    reports = {}
    for which in ("best", "last"):
        assert (
            main(
                [
                    "evaluate",
                    "--run",
                    str(run),
                    "--data",
                    str(data),
                    "--json",
                    "--checkpoint",
                    which,
                ]
            )
            == 0
        )
        reports[which] = json.loads(capsys.readouterr().out)
    # The trained weights of last.pt, evaluated the same way, score otherwise.
    loaded = load_run(run, checkpoint="last", device="cpu")
    loaded.trainer.model.load_state_dict(last["model"])
    posts = load_posts(data, "text", "label")
    loader = loaded.loader(posts.texts, loaded.label_map.encode_all(posts), 32)
    raw = loaded.trainer.evaluate(loader)["loss"]
    assert raw != reports["last"]["loss"]
    if last["history"]["best_epoch"] == 2:  # best.pt and last.pt then hold the same average
        assert reports["best"]["loss"] == reports["last"]["loss"]
    # evaluate of last.pt ran its average: the same weights loaded by hand give its loss.
    loaded.trainer.model.load_state_dict(last["ema"]["model"])
    assert loaded.trainer.evaluate(loader)["loss"] == pytest.approx(reports["last"]["loss"])


@pytest.mark.parametrize("value", ["1", "0", "1.5"])
def test_ema_outside_0_1_is_refused_before_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    err = train_refusal(tmp_path, capsys, ["--ema", value])
    assert f"--ema {float(value)!r} is invalid; expected None or a number in (0, 1)" in err


@pytest.mark.slow
def test_ema_and_balanced_sampler_under_torchrun_match_one_process(tmp_path: Path) -> None:
    """2 gloo ranks with batch 8 == one process with batch 16: each rank draws its half of the
    same balanced draws, and every rank's average follows the same weights."""
    from test_distributed import TINY

    data = write_posts_csv(tmp_path / "posts.csv", 201, seed=5)
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    extra = ["--ema", "0.8", "--sampler", "balanced", "--quiet"]
    train_two_ranks_and_one(["train", "--data", str(data), *TINY, *extra], ddp, one)
    got, expected = load_checkpoint(ddp / LAST_CHECKPOINT), load_checkpoint(one / LAST_CHECKPOINT)
    assert got["ema"]["n_averaged"] == expected["ema"]["n_averaged"] == got["global_step"] > 0
    for key in ("model", "ema"):
        weights = expected[key] if key == "model" else expected[key]["model"]
        for name, tensor in weights.items():
            other = got[key] if key == "model" else got[key]["model"]
            torch.testing.assert_close(other[name], tensor, rtol=0, atol=1e-5, msg=name)
    assert got["history"]["val_losses"] == pytest.approx(
        expected["history"]["val_losses"], abs=1e-6
    )
