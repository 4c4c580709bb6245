"""Trainer: learning, early stopping, clipping, scheduler stepping, AMP, checkpoints and resume.

Every test trains a tiny model on a tiny toy task built here (class c posts draw their tokens from
the c-th block of ids), so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fbdl_fast import ModelConfig, create_facebook_posts_model
from fbdl_fast.checkpoint import CheckpointError, load_checkpoint
from fbdl_fast.metrics import macro_f1
from fbdl_fast.nn import FocalLoss
from fbdl_fast.training import optim
from fbdl_fast.training.trainer import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    METRICS_LOG,
    FacebookPostsTrainer,
    History,
    Trainer,
    cpu_has_native_bf16,
)

NUM_CLASSES = 3
SEQ = 8
VOCAB = 2 + NUM_CLASSES * 8


class TinyClassifier(nn.Module):
    """Masked mean of token embeddings -> dropout -> linear head."""

    def __init__(self, dropout: float = 0.0, dim: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)  # (B, L, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
        return self.head(self.drop(pooled))


class ToyPosts(Dataset):
    """Class c: tokens from ids [2 + 8c, 10 + 8c), random lengths 3..SEQ, padded with 0."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        ids = 2 + 8 * self.labels[:, None] + torch.randint(0, 8, (n, SEQ), generator=g)
        lengths = torch.randint(3, SEQ + 1, (n,), generator=g)
        self.mask = torch.arange(SEQ)[None, :] < lengths[:, None]
        self.ids = ids.masked_fill(~self.mask, 0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class EpochSampler(Sampler[int]):
    """Shuffles by seed + epoch, like data.BucketBatchSampler: the order needs no RNG state."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def loaders(n_train: int = 48, n_val: int = 24, batch_size: int = 8) -> tuple[DataLoader, ...]:
    train = ToyPosts(n_train, seed=1)
    val = ToyPosts(n_val, seed=2)
    train_loader = DataLoader(train, batch_size=batch_size, sampler=EpochSampler(n_train))
    return train_loader, DataLoader(val, batch_size=batch_size)


def tiny_config(**overrides: Any) -> ModelConfig:
    values: dict[str, Any] = {
        "input_dim": 12,
        "hidden_dim": 12,
        "num_layers": 1,
        "num_heads": 2,
        "dropout": 0.0,
        "vocab_size": VOCAB,
        "num_classes": NUM_CLASSES,
        "max_seq_length": SEQ,
        "learning_rate": 0.05,
        "max_epochs": 3,
        "patience": 10,
        "scheduler_type": None,
        "optimizer_type": "adamw",
        "seed": 7,
    }
    values.update(overrides)
    return ModelConfig(**values)


def cpu_trainer(model: nn.Module, config: ModelConfig, **kwargs: Any) -> Trainer:
    """A Trainer pinned to the CPU: these tests compare with fp32 CPU computations, and on a GPU
    machine the default device (CUDA, fp16 autocast) would change the numbers."""
    return Trainer(model, config, device="cpu", **kwargs)


def scripted_validation(
    trainer: Trainer, val_losses: list[float], val_f1s: Optional[list[float]] = None
) -> None:
    """Replace trainer.evaluate by a script of validation losses and macro-F1s (one per epoch)."""
    script = iter(zip(val_losses, val_f1s or [0.5] * len(val_losses)))

    def evaluate(loader: Any) -> dict[str, float]:
        loss, f1 = next(script)
        return {"loss": loss, "accuracy": 0.5, "macro_f1": f1, "num_samples": 1.0}

    trainer.evaluate = evaluate  # type: ignore[method-assign]


# ------------------------------------------------------------------------------- learning


def test_train_returns_the_design_tuple_and_learns() -> None:
    train_loader, val_loader = loaders()
    config = tiny_config(max_epochs=4)
    trainer = cpu_trainer(TinyClassifier(), config)
    # use_mixed_precision=True with amp_dtype="auto" on a CPU trains in fp32.
    assert config.use_mixed_precision and trainer.amp_dtype is None and trainer.scaler is None
    train_losses, val_losses, train_accs, val_accs = trainer.train(train_loader, val_loader)
    assert [len(x) for x in (train_losses, val_losses, train_accs, val_accs)] == [4] * 4
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert val_losses[-1] < val_losses[0]
    assert val_accs[-1] == 1.0
    assert (train_losses, val_losses, train_accs, val_accs) == trainer.history.as_tuple()
    # The reported validation loss is the mean cross-entropy of the final model, by hand.
    model = trainer.model.eval()
    ds = val_loader.dataset
    with torch.no_grad():
        logits = model(ds.ids, ds.mask)
    assert val_losses[-1] == pytest.approx(F.cross_entropy(logits, ds.labels).item(), rel=1e-5)
    assert val_accs[-1] == (logits.argmax(-1) == ds.labels).float().mean().item()


def test_evaluate_and_predict_match_hand_computation() -> None:
    train_loader, val_loader = loaders()
    trainer = cpu_trainer(TinyClassifier(dropout=0.5), tiny_config(max_epochs=1))
    trainer.fit(train_loader, val_loader)
    ds = train_loader.dataset
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(ds.ids, ds.mask)
    plain = DataLoader(ds, batch_size=5)  # uneven last batch: loss is a per-sample mean
    result = trainer.evaluate(plain)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, ds.labels).item(), rel=1e-5)
    assert result["accuracy"] == (logits.argmax(-1) == ds.labels).double().mean().item()
    assert result["macro_f1"] == macro_f1(logits.argmax(-1), ds.labels, NUM_CLASSES)
    unlabeled = [
        {"input_ids": ds.ids[i : i + 7], "attention_mask": ds.mask[i : i + 7]}
        for i in range(0, len(ds), 7)
    ]
    preds, probs = trainer.predict(unlabeled)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    assert torch.equal(preds, logits.argmax(-1))
    assert trainer.model.training is False  # predict restores the mode it found


def test_set_epoch_called_with_each_epoch_index() -> None:
    train_loader, val_loader = loaders()
    cpu_trainer(TinyClassifier(), tiny_config(max_epochs=3)).fit(train_loader, val_loader)
    assert train_loader.sampler.epochs_seen == [0, 1, 2]


# ------------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    train_loader, val_loader = loaders(n_train=16)
    trainer = cpu_trainer(
        TinyClassifier(), tiny_config(max_epochs=10, patience=2), run_dir=tmp_path
    )
    # Epoch 2 is worse (1 bad), 3 is the best (reset), 4 and 5 are worse: stop after epoch 5.
    scripted_validation(trainer, [1.0, 1.1, 0.9, 0.95, 0.99, 0.5, 0.4])
    history = trainer.fit(train_loader, val_loader)
    assert history.epochs == 5
    assert history.val_losses == [1.0, 1.1, 0.9, 0.95, 0.99]
    assert history.stopped_early and history.best_epoch == 3 and history.best_val_loss == 0.9
    assert load_checkpoint(tmp_path / BEST_CHECKPOINT)["epoch"] == 3
    assert load_checkpoint(tmp_path / LAST_CHECKPOINT)["epoch"] == 5


def test_monitor_val_f1_keeps_the_highest_macro_f1_epoch_and_stops_on_it(tmp_path: Path) -> None:
    train_loader, val_loader = loaders(n_train=16)
    config = tiny_config(max_epochs=10, patience=2, monitor="val_f1")
    trainer = cpu_trainer(TinyClassifier(), config, run_dir=tmp_path)
    # The loss is lowest at epoch 2, macro-F1 highest at epoch 4 (and tied at 6, which is not
    # better); 5 and 6 do not improve on 4: stop after epoch 6.
    losses = [1.0, 0.5, 0.7, 0.9, 1.2, 1.3, 1.4]
    f1s = [0.2, 0.4, 0.5, 0.6, 0.55, 0.6, 0.9]
    scripted_validation(trainer, losses, f1s)
    history = trainer.fit(train_loader, val_loader)
    assert history.epochs == 6 and history.stopped_early
    assert history.best_epoch == 4 and history.best_val_f1 == 0.6 and history.best_val_loss == 0.9
    assert history.best_rule == "highest validation macro-F1"
    assert load_checkpoint(tmp_path / BEST_CHECKPOINT)["epoch"] == 4


def test_monitor_is_validated() -> None:
    with pytest.raises(ValueError, match="monitor"):
        tiny_config(monitor="val_accuracy")


def test_no_early_stop_when_validation_keeps_improving() -> None:
    train_loader, val_loader = loaders(n_train=16)
    trainer = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=4, patience=1))
    scripted_validation(trainer, [1.0, 0.9, 0.8, 0.7])
    history = trainer.fit(train_loader, val_loader)
    assert history.epochs == 4 and not history.stopped_early and history.best_epoch == 4


def test_nan_validation_loss_never_improves_and_logs_null(tmp_path: Path) -> None:
    train_loader, val_loader = loaders(n_train=16)
    trainer = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=5, patience=2), run_dir=tmp_path)
    scripted_validation(trainer, [1.0, math.nan, math.nan, 0.1])
    history = trainer.fit(train_loader, val_loader)
    assert history.epochs == 3 and history.stopped_early and history.best_epoch == 1
    lines = [json.loads(line) for line in (tmp_path / METRICS_LOG).read_text().splitlines()]
    assert [line["val_loss"] for line in lines] == [1.0, None, None]  # JSON has no NaN


class NanLoss(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits.sum() * math.nan


def test_diverged_training_loss_stops_with_advice() -> None:
    train_loader, val_loader = loaders(n_train=16)  # 2 steps per epoch
    trainer = cpu_trainer(
        TinyClassifier(), tiny_config(max_epochs=3), criterion=NanLoss(), max_nonfinite_steps=3
    )
    with pytest.raises(
        FloatingPointError, match=r"stopped in epoch 2: 3 optimizer steps in a row.*learning_rate"
    ):
        trainer.fit(train_loader, val_loader)


# ------------------------------------------------------------------------------- clipping


def _grad_norms_at_step(trainer: Trainer) -> list[float]:
    norms: list[float] = []

    def record(opt: torch.optim.Optimizer, *args: Any) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    trainer.optimizer.register_step_pre_hook(record)
    return norms


@pytest.mark.parametrize("clip", [1e-3, 0.05])
def test_gradient_clipping_limits_the_total_norm(clip: float) -> None:
    train_loader, val_loader = loaders(n_train=32)
    clipped = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=1, gradient_clip=clip))
    norms = _grad_norms_at_step(clipped)
    clipped.fit(train_loader, val_loader)
    unclipped = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=1, gradient_clip=0.0))
    raw = _grad_norms_at_step(unclipped)
    unclipped.fit(train_loader, val_loader)
    assert len(norms) == len(raw) == 4
    assert min(raw) > clip  # without clipping every step's norm is above the threshold
    for norm in norms:  # clip_grad_norm_ rescales to clip / (norm + 1e-6) * norm
        assert norm <= clip * (1 + 1e-5)
        assert norm == pytest.approx(clip, rel=1e-4)


# ------------------------------------------------------------------------------- schedulers


def _lr_at_each_step(trainer: Trainer) -> list[float]:
    lrs: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, *args: lrs.append(opt.param_groups[0]["lr"])
    )
    return lrs


def _reference_scheduler(config: ModelConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    model = TinyClassifier()
    opt = optim.create_optimizer(model, config)
    return opt, optim.create_scheduler(opt, config, steps_per_epoch)


def test_plateau_scheduler_steps_on_validation_loss_once_per_epoch() -> None:
    train_loader, val_loader = loaders(n_train=16)
    config = tiny_config(max_epochs=7, scheduler_type="plateau", patience=100)
    val_losses = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    trainer = cpu_trainer(TinyClassifier(), config, steps_per_epoch=len(train_loader))
    trainer.scheduler.patience = 1  # see the LR drop within a few epochs
    scripted_validation(trainer, val_losses)
    history = trainer.fit(train_loader, val_loader)
    # By hand: torch's ReduceLROnPlateau fed the same validation losses, once per epoch.
    opt, sched = _reference_scheduler(config, len(train_loader))
    sched.patience = 1
    expected = []
    for loss in val_losses:
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(loss)
    assert history.learning_rates == expected
    assert len(set(expected)) > 1  # the LR did drop: the comparison means something


def test_one_cycle_scheduler_steps_every_batch() -> None:
    train_loader, val_loader = loaders(n_train=24)
    config = tiny_config(max_epochs=2, scheduler_type="one_cycle")
    trainer = cpu_trainer(TinyClassifier(), config)
    lrs = _lr_at_each_step(trainer)
    trainer.fit(train_loader, val_loader)
    opt, sched = _reference_scheduler(config, len(train_loader))
    expected = []
    for _ in range(2 * len(train_loader)):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == expected and len(set(expected)) == len(expected)
    assert trainer.scheduler_interval == "batch"


def test_epoch_scheduler_steps_once_per_epoch() -> None:
    train_loader, val_loader = loaders(n_train=16)
    config = tiny_config(max_epochs=3, scheduler_type="cosine")
    trainer = cpu_trainer(TinyClassifier(), config)
    lrs = _lr_at_each_step(trainer)
    history = trainer.fit(train_loader, val_loader)
    opt, sched = _reference_scheduler(config, len(train_loader))
    expected = []
    for _ in range(3):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert history.learning_rates == expected and len(set(expected)) == 3
    assert lrs == [lr for lr in expected for _ in range(len(train_loader))]


# ------------------------------------------------------------------------------- checkpoints


def test_checkpoints_hold_the_whole_run(tmp_path: Path) -> None:
    train_loader, val_loader = loaders()
    config = tiny_config(max_epochs=2, scheduler_type="cosine")
    label_map = {"labels": ["joy", "anger", "news"]}
    trainer = cpu_trainer(TinyClassifier(), config, run_dir=tmp_path, label_map=label_map)
    history = trainer.fit(train_loader, val_loader)
    # Atomic writes leave only the finished files: no temporaries.
    assert sorted(os.listdir(tmp_path)) == sorted([BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_LOG])
    last = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    assert last["epoch"] == 2 and last["global_step"] == 2 * len(train_loader)
    assert last["config"] == config.to_dict()
    assert last["label_map"] == label_map
    assert last["model_class"] == "TinyClassifier" and last["model_name"] is None
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(last["model"][name], tensor)
    assert last["optimizer"]["state"][0]["step"].item() == 2 * len(train_loader)
    assert last["scheduler"]["last_epoch"] == 2
    assert last["scaler"] is None
    assert set(last["rng"]) == {"torch", "numpy", "python", "cuda"}
    assert History.from_dict(last["history"]) == history
    best = load_checkpoint(tmp_path / BEST_CHECKPOINT)
    assert best["epoch"] == history.best_epoch


def test_metrics_log_has_one_line_per_epoch(tmp_path: Path) -> None:
    train_loader, val_loader = loaders()
    trainer = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=3), run_dir=tmp_path)
    history = trainer.fit(train_loader, val_loader)
    lines = [json.loads(line) for line in (tmp_path / METRICS_LOG).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["train_loss"] for line in lines] == history.train_losses
    assert [line["val_loss"] for line in lines] == history.val_losses
    assert [line["val_f1"] for line in lines] == history.val_f1s
    assert [line["lr"] for line in lines] == history.learning_rates
    best = [i + 1 for i, line in enumerate(lines) if line["best"]]
    assert best[-1] == history.best_epoch


def _crash_in_epoch(model: nn.Module, epoch_batches: int, epoch: int) -> None:
    """Make model.forward raise at the first training batch of `epoch` (1-based)."""
    calls = {"n": 0}

    def hook(module: nn.Module, args: Any) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] > (epoch - 1) * epoch_batches:
                raise KeyboardInterrupt("simulated crash")

    model.register_forward_pre_hook(hook)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """2 epochs in one run == 1 epoch, crash, a new Trainer resuming from last.pt, 1 epoch.

    The resumed Trainer gets new loaders, as a restarted process builds them: their sampler
    starts at epoch 0, so the resumed epoch has the whole run's order only if resuming tells the
    sampler its epoch (a loader shared with the crashed Trainer would already hold it)."""
    train_loader, val_loader = loaders()
    config = tiny_config(max_epochs=2, scheduler_type="one_cycle", dropout=0.3)

    def fresh_model() -> nn.Module:
        torch.manual_seed(123)
        return TinyClassifier(dropout=0.3)

    whole = cpu_trainer(fresh_model(), config, run_dir=tmp_path / "whole")
    whole_history = whole.fit(train_loader, val_loader)

    crashed_model = fresh_model()
    _crash_in_epoch(crashed_model, len(train_loader), epoch=2)
    crashed = cpu_trainer(crashed_model, config, run_dir=tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(train_loader, val_loader)
    torch.rand(100)  # the global RNG moves on: only the checkpoint's RNG state can restore it
    resumed = cpu_trainer(fresh_model(), config, run_dir=tmp_path / "run")
    restarted_train, restarted_val = loaders()
    history = resumed.fit(
        restarted_train, restarted_val, resume_from=tmp_path / "run" / LAST_CHECKPOINT
    )
    assert restarted_train.sampler.epochs_seen == [1]  # the 0-based index of epoch 2

    timeless = {"epoch_times": []}  # wall-clock times are the only thing allowed to differ
    assert dataclasses.replace(history, **timeless) == dataclasses.replace(
        whole_history, **timeless
    )
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert resumed.scheduler.state_dict() == whole.scheduler.state_dict()
    # Every counter, in memory and in last.pt (global_step once came back as 0 on resume).
    assert resumed.global_step == whole.global_step == 2 * len(train_loader)
    assert _counters(resumed) == _counters(whole)
    assert_same_state(resumed.state_dict(), whole.state_dict())
    assert_same_state(
        load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT),
        load_checkpoint(tmp_path / "whole" / LAST_CHECKPOINT),
    )
    log = (tmp_path / "run" / METRICS_LOG).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_resume_keeps_the_early_stopping_count(tmp_path: Path) -> None:
    """Epoch 2 does not improve (1 bad epoch of patience 2); a run resumed after it stops after
    epoch 3 as the whole run does, not after epoch 4 (the count restarted from 0)."""
    train_loader, val_loader = loaders(n_train=16)
    config = tiny_config(max_epochs=10, patience=2)
    losses = [1.0, 1.1, 1.2, 1.3, 1.4]
    whole = cpu_trainer(TinyClassifier(), config)
    scripted_validation(whole, losses)
    assert whole.fit(train_loader, val_loader).epochs == 3

    first = cpu_trainer(
        TinyClassifier(), dataclasses.replace(config, max_epochs=2), run_dir=tmp_path
    )
    scripted_validation(first, losses[:2])
    first.fit(train_loader, val_loader)
    resumed = cpu_trainer(TinyClassifier(), config, run_dir=tmp_path)
    scripted_validation(resumed, losses[2:])
    history = resumed.fit(train_loader, val_loader, resume_from=tmp_path / LAST_CHECKPOINT)
    assert history.epochs == 3 and history.stopped_early
    counts = ("epoch", "global_step", "_bad_epochs", "_nonfinite_streak")
    assert [_counters(resumed)[c] for c in counts] == [_counters(whole)[c] for c in counts]


def _counters(trainer: Trainer) -> dict[str, Any]:
    """The trainer's scalar state: every int, float and bool attribute (epoch, global_step, the
    early-stopping and non-finite streaks, the last loss, ...)."""
    return {
        name: value
        for name, value in vars(trainer).items()
        if isinstance(value, (int, float, bool)) and not isinstance(value, torch.Tensor)
    }


def assert_same_state(actual: Any, expected: Any, where: str = "state") -> None:
    """Two checkpoint-like structures are equal: tensors bit for bit, everything else by ==,
    except the history's wall-clock epoch times."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key, value in expected.items():
            if key == "epoch_times":
                continue
            assert_same_state(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_state(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(actual, expected), where
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_dropout_makes_the_rng_matter(tmp_path: Path) -> None:
    """Control for the resume test: without the saved RNG state, epoch 2 differs."""
    train_loader, val_loader = loaders()
    config = tiny_config(max_epochs=2, dropout=0.3)
    torch.manual_seed(123)
    whole = cpu_trainer(TinyClassifier(dropout=0.3), config)
    whole.fit(train_loader, val_loader)
    torch.manual_seed(123)
    first = cpu_trainer(TinyClassifier(dropout=0.3), tiny_config(max_epochs=1, dropout=0.3))
    first.fit(train_loader, val_loader)
    torch.manual_seed(999)  # a continuation with other dropout draws
    second = cpu_trainer(first.model, config, optimizer=first.optimizer)
    second.epoch = 1
    second.fit(train_loader, val_loader)
    assert not torch.equal(second.model.head.weight, whole.model.head.weight)


def test_corrupt_checkpoint_error_names_the_file(tmp_path: Path) -> None:
    train_loader, val_loader = loaders(n_train=16)
    trainer = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=1), run_dir=tmp_path)
    trainer.fit(train_loader, val_loader)
    path = tmp_path / LAST_CHECKPOINT
    path.write_bytes(path.read_bytes()[:-200])  # truncated, as by a full disk
    fresh = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=2))
    with pytest.raises(CheckpointError, match=r"last\.pt.*truncated or corrupt"):
        fresh.fit(train_loader, val_loader, resume_from=path)
    other = cpu_trainer(TinyClassifier(dim=6), tiny_config(max_epochs=2))
    with pytest.raises(CheckpointError, match=r"best\.pt.*does not fit this model") as caught:
        other.load_checkpoint(tmp_path / BEST_CHECKPOINT, model_only=True)
    assert "\n" not in str(caught.value) and "size mismatch for" in str(caught.value)


def test_best_checkpoint_keeps_only_what_serving_reads(tmp_path: Path) -> None:
    """best.pt holds the validated weights without the optimizer's moments, scheduler, scaler or
    EMA copy (last.pt keeps them: a run resumes from it), so it is the smaller file; resuming
    from best.pt is refused in one line that names last.pt."""
    train_loader, val_loader = loaders(n_train=16)
    trainer = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=1), run_dir=tmp_path)
    trainer.fit(train_loader, val_loader)
    best, last = (
        load_checkpoint(tmp_path / BEST_CHECKPOINT),
        load_checkpoint(tmp_path / LAST_CHECKPOINT),
    )
    assert not {"optimizer", "scheduler", "scaler", "ema"} & best.keys()
    assert {"optimizer", "scheduler", "scaler", "ema"} <= last.keys()
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())
    assert (tmp_path / BEST_CHECKPOINT).stat().st_size < (tmp_path / LAST_CHECKPOINT).stat().st_size
    fresh = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=2))
    with pytest.raises(CheckpointError, match=r"best\.pt.*resume from the run's last\.pt"):
        fresh.fit(train_loader, val_loader, resume_from=tmp_path / BEST_CHECKPOINT)


def test_model_only_load_restores_weights(tmp_path: Path) -> None:
    train_loader, val_loader = loaders(n_train=16)
    trained = cpu_trainer(
        TinyClassifier(), tiny_config(max_epochs=1), run_dir=tmp_path, label_map=["a", "b", "c"]
    )
    trained.fit(train_loader, val_loader)
    fresh = cpu_trainer(TinyClassifier(), tiny_config())
    fresh.load_checkpoint(tmp_path / BEST_CHECKPOINT, model_only=True)
    assert torch.equal(fresh.model.head.weight, trained.model.head.weight)
    assert fresh.label_map == ["a", "b", "c"] and fresh.epoch == 0


def test_from_checkpoint_rebuilds_a_reference_model(tmp_path: Path) -> None:
    train_loader, val_loader = loaders(n_train=16, n_val=8)
    config = tiny_config(max_epochs=1, kernel_sizes=(2, 3), dropout=0.1)
    model = create_facebook_posts_model("cnn", config)
    trained = cpu_trainer(model, config, run_dir=tmp_path, label_map=["a", "b", "c"])
    trained.fit(train_loader, val_loader)
    loaded = Trainer.from_checkpoint(tmp_path / BEST_CHECKPOINT, device="cpu")
    assert loaded.config == config and loaded.label_map == ["a", "b", "c"]
    expected_preds, expected_probs = trained.predict(val_loader)
    preds, probs = loaded.predict(val_loader)
    assert torch.equal(preds, expected_preds) and torch.equal(probs, expected_probs)
    custom = cpu_trainer(TinyClassifier(), tiny_config(max_epochs=1), run_dir=tmp_path / "custom")
    custom.fit(train_loader, val_loader)
    with pytest.raises(CheckpointError, match=r"best\.pt.*'TinyClassifier'.*model_only=True"):
        Trainer.from_checkpoint(tmp_path / "custom" / BEST_CHECKPOINT)


# ------------------------------------------------------------------------------- precision, UI


def test_bf16_autocast_on_cpu_when_asked() -> None:
    train_loader, val_loader = loaders(n_train=4, n_val=4, batch_size=4)
    config = tiny_config(max_epochs=1, amp_dtype="bfloat16")
    model = TinyClassifier()
    before = copy.deepcopy(model.head.weight.detach())
    dtypes: list[torch.dtype] = []
    model.head.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    # On this project's CI CPU (AVX2 only) bf16 is emulated: the trainer says so.
    expect_warning = (
        contextlib.nullcontext()
        if cpu_has_native_bf16()
        else pytest.warns(UserWarning, match="no AVX512-BF16/AMX")
    )
    with expect_warning:
        trainer = Trainer(model, config, device="cpu")
    assert trainer.amp_dtype == torch.bfloat16 and trainer.scaler is None
    history = trainer.fit(train_loader, val_loader)
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # one training, one validation batch
    assert torch.isfinite(torch.tensor(history.train_losses)).all()
    assert not torch.equal(model.head.weight.detach(), before)
    assert model.head.weight.dtype == torch.float32  # autocast keeps fp32 master weights


def test_fp16_on_cpu_is_refused_with_the_alternatives() -> None:
    with pytest.raises(ValueError, match=r"amp_dtype='float16' needs a CUDA device.*bfloat16"):
        Trainer(TinyClassifier(), tiny_config(amp_dtype="float16"), device="cpu")


@pytest.mark.cuda
def test_fp16_autocast_with_grad_scaler_on_cuda() -> None:
    train_loader, val_loader = loaders()
    trainer = Trainer(TinyClassifier(), tiny_config(max_epochs=3, gradient_clip=1.0))
    assert trainer.device.type == "cuda" and trainer.amp_dtype == torch.float16
    assert trainer.scaler is not None
    history = trainer.fit(train_loader, val_loader)
    assert history.train_losses[-1] < history.train_losses[0]
    assert history.val_accs[-1] == 1.0


def test_progress_bars_only_when_asked_or_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    train_loader, val_loader = loaders(n_train=16)
    cpu_trainer(TinyClassifier(), tiny_config(max_epochs=1)).fit(train_loader, val_loader)
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal: quiet
    cpu_trainer(TinyClassifier(), tiny_config(max_epochs=1), progress=True).fit(
        train_loader, val_loader
    )
    assert "epoch 1/1" in capsys.readouterr().err


# ------------------------------------------------------------------------------- design usage


def test_design_usage_with_focal_loss() -> None:
    config = tiny_config(max_epochs=1, learning_rate=1e-3)
    model = create_facebook_posts_model("transformer", config)
    config.use_focal_loss = True
    trainer = FacebookPostsTrainer(model, config)
    logits = torch.randn(6, NUM_CLASSES)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ce = F.cross_entropy(logits, labels, reduction="none")
    focal = ((1 - torch.exp(-ce)) ** config.focal_gamma * ce).mean()  # the design's formula
    assert isinstance(trainer.criterion, FocalLoss)
    assert trainer.state_dict()["model_name"] == "transformer"
    torch.testing.assert_close(trainer.criterion(logits, labels), focal)
    train_loader, val_loader = loaders(n_train=16, n_val=8)
    train_losses, val_losses, train_accs, val_accs = trainer.train(train_loader, val_loader)
    assert len(train_losses) == len(val_losses) == len(train_accs) == len(val_accs) == 1
    assert val_losses[0] == pytest.approx(trainer.evaluate(val_loader)["loss"], rel=1e-6)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match=r"config must be a fbdl_fast\.ModelConfig"):
        Trainer(TinyClassifier(), {"lr": 1})  # type: ignore[arg-type]
    trainer = cpu_trainer(TinyClassifier(), tiny_config())
    with pytest.raises(ValueError, match=r"batch keys are.*'input_ids'"):
        trainer.evaluate([{"ids": torch.zeros(1, 2, dtype=torch.long)}])


def test_optimizer_is_built_from_the_config_on_first_use() -> None:
    trainer = cpu_trainer(TinyClassifier(), tiny_config(optimizer_type="sgd"))
    assert trainer._optimizer is None  # a Trainer that only predicts never builds one
    built = trainer.optimizer
    assert isinstance(built, torch.optim.SGD) and trainer.optimizer is built
    params = {id(p) for group in built.param_groups for p in group["params"]}
    assert params == {id(p) for p in trainer.model.parameters()}
