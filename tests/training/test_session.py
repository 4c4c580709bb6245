"""A training run as a library call: training.session.train_run and fbdl_fast.train.

What is checked: a run trained from Python (no argparse) writes the files the CLI writes for the
same options (config.json, the labels, the tokenizer, best.pt's predictions); fbdl_fast.train on
texts and labels in memory records where they came from, so that --resume refuses other posts;
requests no run can use are refused with a ValueError naming the field; the class-weights rule on
hand-computed numbers; torch's thread count during and after the call, also when it fails.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import fbdl_fast
from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.config import ModelConfig
from fbdl_fast.data import LabelMap, PostsDataset, load_posts, make_loader, split_posts
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.models import create_model
from fbdl_fast.tokenizer import Tokenizer
from fbdl_fast.training import session
from fbdl_fast.training.losses import loss_class_weights
from fbdl_fast.training.request import TrainError, TrainRequest, train_request
from fbdl_fast.training.session import IN_MEMORY, posts_in_memory, posts_sha256, train_run
from fbdl_fast.training.trainer import Trainer
from tiny_run import tiny_model_args, write_csv, write_posts_csv

# tiny_model_args' model, as keyword fields of the library.
TINY = {
    "input_dim": 16,
    "hidden_dim": 16,
    "num_layers": 1,
    "num_heads": 2,
    "vocab_size": 200,
    "max_seq_length": 32,
}
TEXTS = ["win a free phone now", "so happy with this", "meh", "worst day ever!!! #fail"]


def logits_of(run: Path, texts: list[str]) -> torch.Tensor:
    """The raw logits of the run's best.pt on `texts`, rebuilt from the run folder's files."""
    meta = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config = ModelConfig.from_dict(meta["model_config"])
    tokenizer = Tokenizer.from_file(run / "tokenizer.json")
    model = create_model(meta["model"], config)
    model.load_state_dict(load_checkpoint(run / "best.pt")["model"])
    model.eval()
    dataset = PostsDataset.from_texts(tokenizer, texts, None, config.max_seq_length)
    batch = next(iter(make_loader(dataset, len(texts), shuffle=False, pad_token_id=0)))
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def test_train_run_writes_what_the_cli_writes(tmp_path: Path) -> None:
    """train_run from Python and `fbdl-fast train` with the same options write the same
    config.json, label_map.json and tokenizer.json, and best.pt predicts the same logits."""
    data = write_posts_csv(tmp_path / "posts.csv", 120, seed=4)
    cli_run, lib_run = tmp_path / "cli", tmp_path / "lib"
    options = ["--epochs", "2", "--class-weights", "balanced", "--calibrate", "--quiet"]
    argv = ["train", "--data", str(data), "--output", str(cli_run), *tiny_model_args()]
    assert main([*argv, *options]) == 0

    request, config = train_request(
        "cnn",
        data=str(data),
        output=lib_run,
        epochs=2,
        class_weights="balanced",
        calibrate=True,
        **TINY,
    )
    result = train_run(request, config)

    assert result.run_dir == lib_run and result.history.epochs == 2
    assert result.calibration is not None and result.thresholds is None
    for name in ("config.json", "label_map.json", "tokenizer.json"):
        assert json.loads((lib_run / name).read_text()) == json.loads((cli_run / name).read_text())
    meta = json.loads((lib_run / "config.json").read_text())
    assert meta["model_config"]["class_weights"] is not None  # balanced: the data's weights
    assert torch.equal(logits_of(lib_run, TEXTS), logits_of(cli_run, TEXTS))
    calibration = load_checkpoint(lib_run / "best.pt")["calibration"]
    assert calibration["temperature"] == pytest.approx(result.calibration.temperature)
    assert result.best_epoch in (1, 2)
    best = result.history.val_losses[result.best_epoch - 1]
    assert result.best["val_loss"] == best == min(result.history.val_losses)


def test_train_on_texts_in_memory_records_their_digest(tmp_path: Path) -> None:
    """fbdl_fast.train(texts=..., labels=...): the run's config.json names no file but holds
    the SHA-256 of the texts and labels, so --resume with other labels is refused."""
    posts = generate_posts(80, seed=2)
    assert posts.labels is not None
    out = tmp_path / "mem"
    lines: list[str] = []
    result = fbdl_fast.train(
        texts=posts.texts,
        labels=posts.labels,
        model="cnn",
        output=out,
        epochs=1,
        say=lines.append,
        **TINY,
    )
    assert result.run_dir == out and (out / "best.pt").is_file()
    meta = json.loads((out / "config.json").read_text())
    in_memory = posts_in_memory(posts.texts, posts.labels)
    assert meta["data"]["source"] == IN_MEMORY
    assert meta["data"]["sha256"] == posts_sha256(in_memory)
    assert LabelMap.load(out / "label_map.json").labels == sorted(set(posts.labels))
    assert lines[0].startswith(f"80 posts from {IN_MEMORY}: 72 train / 8 validation")

    # The same posts continue the run (finished: nothing left to train); other labels do not.
    same = {"model": "cnn", "output": out, "epochs": 1, "resume": True, **TINY}
    again = fbdl_fast.train(texts=posts.texts, labels=posts.labels, **same)
    assert again.history.epochs == 1
    changed = list(posts.labels)
    changed[0] = "neutral" if changed[0] != "neutral" else "positive"
    with pytest.raises(TrainError, match=r"resume=True continues .* the data: <in-memory> has"):
        fbdl_fast.train(texts=posts.texts, labels=changed, **same)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"val_fraction": 1.0}, r"^val_fraction=1\.0 is invalid; expected a value in \(0, 1\)"),
        ({"accumulate": 0}, r"^accumulate=0 is invalid; expected a positive integer"),
        ({"threads": 0}, r"^threads=0 is invalid; expected a positive integer"),
        ({"class_weights": "balance"}, r"^class_weights='balance' is neither balanced, none"),
        ({"class_weights": {"spam": -1}}, r"^class_weights: the weight of label 'spam' is -1"),
        ({"tune_thresholds": True}, r"^tune_thresholds=True tunes multi_label=True runs"),
        ({"multi_label": True, "calibrate": True}, r"^calibrate=True fits a softmax"),
        ({"device": "tpu"}, r"^device='tpu' is not supported; accepted: cpu, cuda"),
        ({"focal_alpha": 0.5}, r"^focal_alpha=0\.5 needs loss=focal \(the loss is cross_entropy"),
        ({"focal_gamma": 5.0}, r"^focal_gamma=5\.0 needs loss=focal \(the loss is cross_entropy"),
        ({"label_separator": ";"}, r"^label_separator=';' splits the labels of multi_label=True"),
        ({"focal_alpha_from_weights": True, "loss": "focal"}, r"takes alpha from class_weights"),
        ({"kernel_sizes": (2, 3), "model": "lstm"}, r"^kernel_sizes=2,3: .* model=lstm has no"),
        ({"pooling": "cls"}, r"^pooling='cls': only a pretrained encoder"),
        ({"vocab_size": 3}, r"^vocab_size=3 is too small"),
        ({"tokenizer_style": "plain"}, r"^tokenizer_style='plain' is not known; accepted: bert"),
        ({"encoding_errors": "skip"}, r"^encoding_errors='skip' is not supported"),
        ({"max_seq_length": 2}, r"^max_seq_length=2 is too small; expected an integer >= 3"),
        ({"output": ""}, r"^output is empty; expected the run folder's path"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, Any], needle: str) -> None:
    """A request no run can use: TrainError (a ValueError) naming the Python field, raised by
    validate before any data is read (the file does not exist)."""
    model = fields.pop("model", "cnn")
    request, config = train_request(model, data="/nonexistent/posts.csv", **fields)
    with pytest.raises(ValueError, match=needle):
        request.validate(config)


def test_texts_in_memory_empty_or_with_numpy_labels(tmp_path: Path) -> None:
    """No texts is refused as such (not as a label map without labels); numpy's integer labels
    are integers, as Python's are."""
    import numpy as np

    with pytest.raises(TrainError, match=r"^texts and labels are empty; expected at least one"):
        fbdl_fast.train(texts=[], labels=[], model="cnn", output=tmp_path / "none")
    posts = generate_posts(60, seed=3)
    codes = {label: i for i, label in enumerate(sorted(set(posts.labels or [])))}
    numbers = np.array([codes[label] for label in posts.labels or []], dtype=np.int64)
    out = tmp_path / "numbers"
    fbdl_fast.train(texts=posts.texts, labels=numbers, model="cnn", output=out, epochs=1, **TINY)
    assert LabelMap.load(out / "label_map.json").labels == sorted(codes.values())


def test_the_config_template_leaves_the_class_weights_to_the_request() -> None:
    """class_weights set in the ModelConfig template would be replaced by the request's choice:
    refused, naming both."""
    request, config = train_request("cnn", data="p.csv")
    config.class_weights = [1.0, 2.0]
    with pytest.raises(TrainError, match=r"ModelConfig\.class_weights=\[1\.0, 2\.0\]: .* request"):
        request.validate(config)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: train_request("gru", data="p.csv"), r"^model='gru' is not known"),
        (lambda: train_request("cnn", data="p.csv", epochz=3), r"unknown field\(s\) epochz"),
        (lambda: train_request("cnn", data="p.csv", num_classes=3), r"num_classes: decided by"),
        (lambda: train_request("cnn", data="p.csv", lr=-1.0), r"learning_rate=-1\.0 is invalid"),
        (
            lambda: train_request("cnn", data="p.csv", loss="focal", focal_alpha=float("inf")),
            r"focal_alpha=inf is invalid; expected a finite number >= 0",
        ),
        (lambda: fbdl_fast.train(texts=["a", 2], labels=["x", "y"]), r"^texts\[1\] is a int"),
        (lambda: fbdl_fast.train(texts=["a"], labels=["x", "y"]), r"1 texts and 2 labels"),
        (lambda: fbdl_fast.train("p.csv", texts=["a"], labels=["x"]), r"either data .* or"),
    ],
)
def test_bad_fields_and_texts_name_what_is_wrong(call: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        call()


def test_class_weights_rule_hand_computed(tmp_path: Path) -> None:
    """loss_class_weights: balanced is n / (C * n_c) over the training posts; a mapping or a file
    is put in the label map's order; as_focal_alpha moves the weights to the focal alpha."""
    rows = [(f"post {i}", "ham") for i in range(6)] + [(f"spam {i}", "spam") for i in range(3)]
    rows += [("only one", "eggs")]
    posts = load_posts(write_csv(tmp_path / "p.csv", rows), "text", "label")
    labels = LabelMap.from_labels(posts.labels or [])  # eggs, ham, spam: counts 1, 6, 3
    balanced = loss_class_weights("balanced", posts, labels)
    assert balanced == {"class_weights": pytest.approx([10 / 3, 10 / 18, 10 / 9])}
    mapping = {"spam": 2, "ham": 0.5, "eggs": 4}
    assert loss_class_weights(mapping, posts, labels) == {"class_weights": [4.0, 0.5, 2.0]}
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps(mapping), encoding="utf-8")
    assert loss_class_weights(weights, posts, labels, as_focal_alpha=True) == {
        "class_weights": None,
        "focal_alpha": [4.0, 0.5, 2.0],
    }
    assert loss_class_weights("none", posts, labels) == {"class_weights": None}
    with pytest.raises(ValueError, match=r"mapping of class weights: no weight for 'eggs'"):
        loss_class_weights({"spam": 1, "ham": 1}, posts, labels)
    with pytest.raises(ValueError, match=r"unknown label\(s\) 'bacon'"):
        loss_class_weights({**mapping, "bacon": 1}, posts, labels)


def test_threads_are_set_for_the_call_and_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train_run trains with request.threads torch threads and leaves torch's setting as it
    found it, after a run and after a run that fails once the threads were set."""
    seen: list[int] = []
    real_fit = Trainer.fit

    def fit(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit)
    data = write_posts_csv(tmp_path / "posts.csv", 60, seed=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        request, config = train_request(
            "cnn", data=str(data), output=tmp_path / "r", epochs=1, threads=2, **TINY
        )
        train_run(request, config)
        # The model's fit, then the n-gram baseline's beside it: both at request.threads.
        assert seen == [2, 2] and torch.get_num_threads() == 3
        missing = TrainRequest(data=str(tmp_path / "missing.csv"), output=tmp_path / "m")
        with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
            train_run(missing, config)  # the data is read after the threads are set
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)


def test_warnings_go_to_the_logger_and_progress_to_say(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The labels' warnings are logged (WARNING, fbdl_fast.training.session) even when `say` is
    None; progress lines go to `say` alone."""
    rows = [(f"ham post {i}", "ham") for i in range(20)] + [("one", "lonely")]
    data = write_csv(tmp_path / "posts.csv", rows)
    request, config = train_request("cnn", data=str(data), output=tmp_path / "r", epochs=1, **TINY)
    with caplog.at_level(logging.WARNING, logger=session.__name__):
        train_run(request, config, say=None)
    warned = [r.getMessage() for r in caplog.records if r.name == session.__name__]
    assert any(
        "have fewer than 2 posts, too few to learn and to validate: lonely" in w for w in warned
    )
    assert all(w.startswith(f"{data}: ") for w in warned)


def test_split_is_the_clis(tmp_path: Path) -> None:
    """The session splits as split_posts does with the request's val_fraction and config's seed
    (config.json's counts are those of that split)."""
    data = write_posts_csv(tmp_path / "posts.csv", 50, seed=3)
    request, config = train_request(
        "cnn", data=str(data), output=tmp_path / "r", epochs=1, val_fraction=0.2, seed=7, **TINY
    )
    train_run(request, config)
    train, val = split_posts(load_posts(data, "text", "label"), 0.2, 7)
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())["data"]
    assert (recorded["train_posts"], recorded["val_posts"]) == (len(train), len(val))
