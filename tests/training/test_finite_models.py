"""Only finite models are published and served: a run whose training diverged is refused with
its epoch and advice (kept to resume from its last finite weights when it has any), pretrained
weights holding NaN are refused naming the tensor, and predict refuses NaN logits as evaluate
does."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.config import ModelConfig
from fbdl_fast.models import create_model
from fbdl_fast.training import trainer as trainer_module
from fbdl_fast.training.loading import load_run
from fbdl_fast.training.trainer import BEST_CHECKPOINT, LAST_CHECKPOINT, Trainer
from minilm_run import minilm_argv, needs_minilm
from tiny_run import cli_refusal, make_run, tiny_model_args, write_posts_csv


def _train_argv(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    options = ["--data", str(data), "--output", str(out), "--epochs", str(epochs), "--quiet"]
    return ["train", *tiny_model_args(), *options, *extra]


def _finite(path: Path) -> bool:
    """Every floating-point weight of the checkpoint at `path` is finite."""
    weights = load_checkpoint(path)["model"].values()
    return all(bool(w.isfinite().all()) for w in weights if w.is_floating_point())


def _spoil_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, value: float) -> None:
    """Every weight of the model is set to `value` at the end of epoch `epoch` (1-based)'s
    training steps, before its validation: NaN for diverged weights, a huge finite number for
    weights whose logits overflow."""
    real = Trainer._train_epoch

    def spoiled(self: Trainer, loader: Any, index: int) -> tuple[float, float, int]:
        out = real(self, loader, index)
        if index + 1 == epoch:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(value)
        return out

    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", spoiled)


def test_a_diverged_run_is_refused_with_its_epoch_and_advice_and_not_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train --epochs 1 --lr 1e6: its only epoch ends with NaN weights. Exit 2 in one line
    naming the epoch, --lr and --gradient-clip; no run folder, no partial folder."""
    data = write_posts_csv(tmp_path / "posts.csv", 300, seed=0)
    runs = tmp_path / "runs"
    err = cli_refusal(capsys, _train_argv(data, runs / "run", 1, "--lr", "1e6"))
    assert "training diverged, so the run is not published" in err, err
    assert "epoch 1 validation loss nan" in err and "--lr (now 1e+06)" in err, err
    assert "--gradient-clip" in err and "nothing was kept" in err, err
    assert not runs.exists() or list(runs.iterdir()) == []


def test_weights_overflowing_at_the_first_epoch_keep_the_run_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights that are finite but give infinite logits (validation loss not finite) in every
    epoch: not published; the partial folder keeps last.pt (finite weights) and the message
    says to resume."""
    data = write_posts_csv(tmp_path / "posts.csv", 300, seed=0)
    _spoil_after_epoch(monkeypatch, 1, 1e30)
    runs = tmp_path / "runs"
    err = cli_refusal(capsys, _train_argv(data, runs / "run", 1))
    assert "training diverged" in err and "epoch 1 validation loss" in err, err
    assert "is kept in" in err and "--resume" in err, err
    assert not (runs / "run").exists()
    kept = [p for p in runs.iterdir() if (p / LAST_CHECKPOINT).is_file()]
    assert len(kept) == 1 and _finite(kept[0] / LAST_CHECKPOINT)
    assert not (kept[0] / BEST_CHECKPOINT).exists()


def test_nan_weights_are_never_written_and_last_keeps_the_last_finite_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1 trains, epoch 2 ends with NaN weights: the run is published from its finite best
    epoch 1, and last.pt holds epoch 1's weights (resumable), not epoch 2's NaN."""
    data = write_posts_csv(tmp_path / "posts.csv", 300, seed=0)
    _spoil_after_epoch(monkeypatch, 2, math.nan)
    out = tmp_path / "run"
    assert main(_train_argv(data, out, 2, "--patience", "5")) == 0
    assert _finite(out / BEST_CHECKPOINT) and _finite(out / LAST_CHECKPOINT)
    assert load_checkpoint(out / LAST_CHECKPOINT)["epoch"] == 1
    assert math.isfinite(load_run(out).predict(["free phone"])[0].probability)


def _nan_run(tmp_path: Path) -> Path:
    """make_run's folder whose best.pt holds NaN in its output layer."""
    folder = make_run(tmp_path / "run")
    run = load_run(folder)
    config: ModelConfig = run.config
    model = create_model("cnn", config)
    model.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        list(model.parameters())[-1].fill_(math.nan)
    Trainer(model, config, device="cpu").save_checkpoint(folder / BEST_CHECKPOINT)
    return folder


def test_predict_refuses_nan_logits_as_evaluate_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose weights give NaN logits: Run.predict raises a ValueError, and `fbdl-fast
    predict` exits 2 in one line writing no prediction (it wrote the label of every post with
    probability nan)."""
    folder = _nan_run(tmp_path)
    with pytest.raises(ValueError, match="logits hold NaN or infinite values for 2 of 2 posts"):
        load_run(folder).predict(["free phone", "so happy"])
    out = tmp_path / "predictions.csv"
    err = cli_refusal(
        capsys, ["predict", "--run", str(folder), "--text", "free phone", "--output", str(out)]
    )
    assert "logits hold NaN or infinite values" in err, err
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_pretrained_weights_holding_nan_are_refused_naming_the_tensor(
    tmp_path: Path, suffix: str
) -> None:
    """bert.read_weights on a weights file one of whose tensors holds NaN (or inf): a ValueError
    naming the file and that tensor."""
    from safetensors.torch import save_file

    from fbdl_fast.models.bert import read_weights

    tensors = {"a.weight": torch.ones(3, 2), "b.bias": torch.zeros(4), "ids": torch.arange(3)}
    tensors["b.bias"][2] = math.inf if suffix == ".bin" else math.nan
    path = tmp_path / f"model{suffix}"
    save_file(tensors, path) if suffix == ".safetensors" else torch.save(tensors, path)
    with pytest.raises(ValueError) as caught:
        read_weights(path)
    message = str(caught.value)
    assert str(path) in message and "tensor b.bias holds 1 NaN or infinite value of 4" in message


@needs_minilm
def test_minilm_with_a_nan_pretrained_tensor_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """train --model minilm whose model.safetensors holds a NaN: exit 2 in one line naming the
    tensor, and no run or partial folder."""
    import shutil

    from safetensors.torch import load_file, save_file

    from fbdl_fast.models import bert

    installed = bert.resolve_pretrained("all-minilm-l6-v2")
    folder = tmp_path / "minilm"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(installed / name, folder / name)
    tensors = load_file(installed / "model.safetensors")
    name = next(k for k in tensors if "layer.0.attention.self.query.weight" in k)
    tensors[name][0, 0] = math.nan
    save_file(tensors, folder / "model.safetensors")
    monkeypatch.setattr(bert, "resolve_pretrained", lambda _name: folder)
    # 64 posts: enough that train has no small-data warning before the refusal's one line
    data = write_posts_csv(tmp_path / "posts.csv", 64, seed=2)
    runs = tmp_path / "runs"
    err = cli_refusal(capsys, minilm_argv(data, runs / "run", 1))
    assert f"tensor {name} holds 1 NaN" in err, err
    assert not runs.exists() or list(runs.iterdir()) == []
