"""Gradient accumulation equals a larger batch; torch.compile is opt-in and fails clearly."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fbdl_fast import ModelConfig
from fbdl_fast.cli import main
from fbdl_fast.training.trainer import CompileError, Trainer
from tiny_run import Bag, Posts, bag_config, write_posts_csv


def posts(n: int, seed: int = 1) -> Posts:
    """`n` posts of 2 to 6 tokens, padded: the mask matters."""
    return Posts(n, seed, padded=True)


def config(**overrides: Any) -> ModelConfig:
    values: dict[str, Any] = {
        "learning_rate": 0.5,
        "optimizer_type": "sgd",  # plain SGD: a wrongly scaled gradient moves the weights
        "scheduler_type": "one_cycle",  # per-step LR: counts optimizer steps, not batches
        "gradient_clip": 0.0,
    }
    return bag_config(**(values | overrides))


def train(batch_size: int, accumulate: int, **kwargs: Any) -> Trainer:
    data = posts(38)  # 38 = 2 * 16 + 6: the last batch and the last group are short
    torch.manual_seed(0)
    trainer = Trainer(Bag(), config(), device="cpu", accumulate_steps=accumulate, **kwargs)
    trainer.fit(DataLoader(data, batch_size=batch_size), DataLoader(posts(12, seed=2), 6))
    return trainer


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


def test_four_accumulated_batches_equal_one_four_times_larger() -> None:
    big = train(batch_size=16, accumulate=1)
    # Batches of 4 (last of 2): groups of 4, 4 and 2 micro-batches = batches of 16, 16 and 6.
    accumulated = train(batch_size=4, accumulate=4)
    assert accumulated.global_step == big.global_step == 6  # 3 optimizer steps per epoch
    assert accumulated.scheduler.state_dict()["_step_count"] == 7  # built + 6 steps
    assert_same_weights(accumulated.model, big.model, atol=1e-5)
    assert accumulated.history.train_losses == pytest.approx(big.history.train_losses, abs=1e-6)
    # Control: the same batches of 4 without accumulation train to other weights.
    unaccumulated = train(batch_size=4, accumulate=1)
    with pytest.raises(AssertionError):
        assert_same_weights(unaccumulated.model, big.model, atol=1e-3)


def test_uneven_micro_batches_are_weighted_by_their_samples() -> None:
    """Batches of 5 in groups of 3 (15, 15, 8 posts): the last group holds 5 + 3 posts, whose
    mean loss is (5 * mean_a + 3 * mean_b) / 8, not the mean of the two means."""
    data = posts(38)
    torch.manual_seed(0)
    accumulated = Trainer(Bag(), config(max_epochs=1), device="cpu", accumulate_steps=3)
    accumulated.fit(DataLoader(data, batch_size=5), DataLoader(posts(12, seed=2), 6))
    torch.manual_seed(0)
    big = Trainer(Bag(), config(max_epochs=1), device="cpu")
    big.fit(DataLoader(data, batch_size=15), DataLoader(posts(12, seed=2), 6))
    assert_same_weights(accumulated.model, big.model, atol=1e-5)


def test_accumulate_steps_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match=r"accumulate_steps=0 is invalid; expected an integer"):
        Trainer(Bag(), config(), device="cpu", accumulate_steps=0)
    with pytest.raises(TypeError, match=r"compile='yes' is invalid"):
        Trainer(Bag(), config(), device="cpu", compile="yes")  # type: ignore[arg-type]


def test_compiled_training_matches_eager() -> None:
    """Dynamo + AOTAutograd (backend aot_eager: no C++ build, seconds) trace the whole step;
    the weights equal eager training's. The inductor build is the slow test below."""
    eager = train(batch_size=8, accumulate=2)
    compiled = train(batch_size=8, accumulate=2, compile={"backend": "aot_eager"})
    assert compiled.compile_options == {"backend": "aot_eager"}
    assert_same_weights(compiled.model, eager.model, atol=1e-5)
    assert compiled.evaluate(DataLoader(posts(12, seed=2), 6))["loss"] == pytest.approx(
        eager.evaluate(DataLoader(posts(12, seed=2), 6))["loss"], abs=1e-5
    )


@pytest.mark.slow
def test_compile_with_inductor_on_this_cpu() -> None:
    """The default backend: inductor generates C++ and builds it with the machine's compiler."""
    eager = train(batch_size=16, accumulate=1)
    compiled = train(batch_size=16, accumulate=1, compile=True)
    assert_same_weights(compiled.model, eager.model, atol=1e-5)


def _broken_backend(gm: Any, example_inputs: Any) -> Any:
    raise subprocess.CalledProcessError(1, ["c++", "kernel.cpp"], "fatal error: Python.h")


def test_a_compiler_failure_is_reported_with_what_to_do() -> None:
    trainer = Trainer(Bag(), config(), device="cpu", compile={"backend": _broken_backend})
    with pytest.raises(CompileError, match=r"torch.compile could not compile Bag on cpu") as err:
        trainer.fit(DataLoader(posts(8), 4), DataLoader(posts(4, seed=2), 4))
    assert "train without compile (drop --compile / compile=True)" in str(err.value)
    assert "kernel.cpp" in str(err.value)  # the cause, named


def test_cli_compile_failure_exits_2_and_leaves_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_posts_csv(tmp_path / "posts.csv", 60, seed=1)
    # The compiler of this machine, broken: as a missing or failing C++ toolchain would be.
    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend=_broken_backend))
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(out), "--compile", "--quiet"]
    assert main([*argv, "--model", "cnn", "--input-dim", "8", "--hidden-dim", "8"]) == 2
    err = capsys.readouterr().err
    assert "torch.compile could not compile FacebookPostsCNN" in err and "--compile" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [data]  # no run folder, no partial one
