"""Students that start from the teacher (training.students): a MiniLM student made of K of a
MiniLM teacher's layers (weights, logits against transformers' BertModel cut to those layers by
hand, and an ordinary run through predict, evaluate, export and resume), a CNN given the
teacher's token embeddings, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fbdl_fast.cli import main
from fbdl_fast.data import LabelMap
from fbdl_fast.models import create_model
from fbdl_fast.training import students
from fbdl_fast.training import trainer as train_module
from fbdl_fast.training.loading import load_run
from minilm_run import TINY, minilm_argv, needs_minilm
from tiny_run import write_posts_csv


def test_spread_layers_take_the_last_of_each_group() -> None:
    """K of N layers: one of each of K near-equal groups, the last of it (the teacher's last
    layer always kept); K outside [1, N] is refused naming --student-layers."""
    assert students.spread_layers(6, 2) == [2, 5]
    assert students.spread_layers(6, 3) == [1, 3, 5]
    assert students.spread_layers(6, 1) == [5]
    assert students.spread_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    assert students.spread_layers(12, 4) == [2, 5, 8, 11]
    for bad in (0, 7):
        with pytest.raises(ValueError, match=rf"--student-layers {bad} is invalid.*\[1, 6\]"):
            students.spread_layers(6, bad)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny MiniLM teacher (16 posts, 1 epoch) and a minilm student of 2 of its layers,
    distilled with a transfer set of 1 variant a post."""
    root = tmp_path_factory.mktemp("students")
    data = write_posts_csv(root / "posts.csv", 16, seed=1)
    run = root / "teacher"
    assert main(minilm_argv(data, run, 1)) == 0
    return {"data": data, "teacher": run, "root": root}


def distill_argv(teacher: dict[str, Path], out: Path, student: str, *extra: str) -> list[str]:
    options = ["--teacher", str(teacher["teacher"]), "--data", str(teacher["data"])]
    return ["distill", *options, "--output", str(out), "--student", student, *TINY, *extra]


def _student_of(run, layers: int, labels: LabelMap):  # type: ignore[no-untyped-def]
    config = students.student_config(run, "minilm", run.config, layers, "own")
    config = config.__class__(**{**config.to_dict(), "num_classes": len(labels)})
    model = create_model("bert", config)
    students.init_student(model, run, "minilm", labels, "own")
    return model.eval()


@needs_minilm
def test_student_layers_are_the_teachers_chosen_layers(teacher: dict[str, Path]) -> None:
    """At the start a 2-layer student's blocks are the teacher's blocks 2 and 5 (0-based), its
    embeddings the teacher's, and its head the teacher's with rows in the student's label order
    (here reversed)."""
    run = load_run(teacher["teacher"], device="cpu")
    labels = LabelMap(list(reversed(run.label_map.labels)))
    student = _student_of(run, 2, labels)
    theirs = run.model.state_dict()
    ours = student.state_dict()
    assert student.config.num_layers == 2 and student.config.extra["teacher_layers"] == [2, 5]
    for name, tensor in ours.items():
        if name.startswith("blocks."):
            index, rest = name.split(".", 2)[1:]
            source = f"blocks.{[2, 5][int(index)]}.{rest}"
            assert torch.equal(tensor, theirs[source]), name
        elif name.startswith("head."):
            rows = [run.label_map.encode(label) for label in labels.labels]
            assert torch.equal(tensor, theirs[name][rows]), name
        else:
            assert torch.equal(tensor, theirs[name]), name
    assert not torch.equal(ours["blocks.0.ln_1.weight"], theirs["blocks.0.ln_1.weight"])


def _hf_state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The teacher's encoder under transformers' key names, written out by hand."""
    s = encoder.state_dict()
    out = {
        "embeddings.word_embeddings.weight": s["embeddings.word.weight"],
        "embeddings.position_embeddings.weight": s["embeddings.position.weight"],
        "embeddings.token_type_embeddings.weight": s["embeddings.token_type.weight"],
        "embeddings.LayerNorm.weight": s["embeddings.ln.weight"],
        "embeddings.LayerNorm.bias": s["embeddings.ln.bias"],
    }
    for i in range(len(encoder.blocks)):
        ours, hf = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = s[f"{ours}attn.in_proj_{kind}"].chunk(3)
            out[f"{hf}attention.self.query.{kind}"] = q
            out[f"{hf}attention.self.key.{kind}"] = k
            out[f"{hf}attention.self.value.{kind}"] = v
            out[f"{hf}attention.output.dense.{kind}"] = s[f"{ours}attn.out_proj.{kind}"]
            out[f"{hf}attention.output.LayerNorm.{kind}"] = s[f"{ours}ln_1.{kind}"]
            out[f"{hf}intermediate.dense.{kind}"] = s[f"{ours}mlp.fc.{kind}"]
            out[f"{hf}output.dense.{kind}"] = s[f"{ours}mlp.proj.{kind}"]
            out[f"{hf}output.LayerNorm.{kind}"] = s[f"{ours}ln_2.{kind}"]
    return out


@needs_minilm
def test_student_logits_equal_a_bert_model_cut_to_those_layers(teacher: dict[str, Path]) -> None:
    """The student's logits are those of transformers' BertModel holding the teacher's weights
    with only layers 2 and 5 kept (cut by hand), mean-pooled, through the teacher's head."""
    transformers = pytest.importorskip("transformers")
    run = load_run(teacher["teacher"], device="cpu")
    student = _student_of(run, 2, run.label_map)
    c = run.config
    reference = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.input_dim,
            num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            intermediate_size=c.hidden_dim,
            max_position_embeddings=c.max_seq_length,
            type_vocab_size=c.type_vocab_size,
            layer_norm_eps=c.layer_norm_eps,
            attn_implementation="eager",
        ),
        add_pooling_layer=False,
    )
    missing, unexpected = reference.load_state_dict(_hf_state(run.model), strict=False)
    assert not unexpected and all("position_ids" in key for key in missing), missing
    reference.encoder.layer = torch.nn.ModuleList([reference.encoder.layer[i] for i in (2, 5)])
    reference.eval()
    texts = ["win a free phone now", "the train was late again this morning", "ok"]
    batch = run.tokenizer.encode_batch(texts, max_length=c.max_seq_length)
    ids = torch.from_numpy(batch.input_ids).long()
    mask = torch.from_numpy(batch.attention_mask).long()
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask[:, :, None].to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        expected = run.model.head(pooled)
        got = student(ids, mask.bool())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Not the teacher's own logits: two layers compute something else than six.
    assert not torch.allclose(got, run.model.eval()(ids, mask.bool()), atol=1e-3)


@needs_minilm
def test_minilm_student_is_an_ordinary_minilm_run(
    teacher: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """distill --student minilm --student-layers 2 --augment 1: a minilm run of 2 layers reading
    the teacher's tokenizer, that evaluate, predict, export int8 and onnx and --resume take."""
    out = tmp_path / "l2"
    argv = distill_argv(teacher, out, "minilm", "--student-layers", "2", "--augment", "1")
    assert main([*argv, "--epochs", "2"]) == 0
    capsys.readouterr()
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["model"] == "minilm" and meta["model_config"]["num_layers"] == 2
    assert meta["model_config"]["extra"]["teacher_layers"] == [2, 5]
    assert meta["distillation"]["student_layers"] == 2
    assert meta["distillation"]["augment"]["variants"] == 1
    run = load_run(out, device="cpu")
    assert run.tokenizer.to_str() == load_run(teacher["teacher"]).tokenizer.to_str()
    assert len(run.model.blocks) == 2

    data = str(teacher["data"])
    assert main(["evaluate", "--run", str(out), "--data", data, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 16
    preds = tmp_path / "p.jsonl"
    assert main(["predict", "--run", str(out), "--data", data, "--output", str(preds)]) == 0
    rows = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 16 and all(r["label"] in run.label_map.labels for r in rows)
    for fmt, file in (("int8", "model.int8.pt"), ("onnx", "model.onnx")):
        assert main(["export", "--run", str(out), "--format", fmt, "--quiet"]) == 0, fmt
        assert (out / file).is_file()
        argv = ["predict", "--run", str(out), "--data", data, "--checkpoint", fmt, "--quiet"]
        assert main([*argv, "--output", str(tmp_path / f"{fmt}.jsonl")]) == 0, fmt

    # An interrupted student resumes to the weights of the uninterrupted one.
    step = train_module.Trainer._train_group

    def interrupted(self, group):  # type: ignore[no-untyped-def]
        if self.epoch == 1:
            raise KeyboardInterrupt
        return step(self, group)

    again = tmp_path / "again"
    argv = [*distill_argv(teacher, again, "minilm", "--augment", "1"), "--epochs", "2"]
    monkeypatch.setattr(train_module.Trainer, "_train_group", interrupted)
    assert main(argv) == 130
    monkeypatch.setattr(train_module.Trainer, "_train_group", step)
    assert main([*argv, "--resume"]) == 0
    resumed = torch.load(again / "last.pt", weights_only=False)["model"]
    whole = torch.load(out / "last.pt", weights_only=False)["model"]
    for name, tensor in whole.items():
        assert torch.equal(resumed[name], tensor), name


@needs_minilm
def test_cnn_starts_from_the_teachers_embeddings(teacher: dict[str, Path], tmp_path: Path) -> None:
    """--student-embeddings teacher: the CNN reads the teacher's tokenizer, its input_dim is the
    teacher's width and its embedding table starts as the teacher's word embeddings. It is the
    default for a MiniLM teacher (auto), unless an option of the student's own tokenizer or
    width is given."""
    run = load_run(teacher["teacher"], device="cpu")
    config = students.student_config(run, "cnn", run.config.__class__(), None, "teacher")
    assert config.input_dim == 384
    config = config.__class__(**{**config.to_dict(), "vocab_size": run.config.vocab_size})
    model = create_model("cnn", config)
    students.init_student(model, run, "cnn", run.label_map, "teacher")
    assert torch.equal(model.embedding.weight, run.model.embedding.weight)

    out = tmp_path / "cnn"
    assert main(distill_argv(teacher, out, "cnn")) == 0  # auto: the teacher's, for MiniLM
    student = load_run(out, device="cpu")
    assert student.config.input_dim == 384
    assert student.config.vocab_size == run.config.vocab_size
    assert student.tokenizer.to_str() == run.tokenizer.to_str()
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["distillation"]["student_embeddings"] == "teacher"

    own = tmp_path / "own"
    assert main(distill_argv(teacher, own, "cnn", "--vocab-size", "120")) == 0
    student = load_run(own, device="cpu")
    assert student.tokenizer.vocab_size <= 120 and student.config.input_dim != 384
    assert "student_embeddings" not in json.loads((own / "config.json").read_text())["distillation"]


@needs_minilm
def test_students_the_teacher_cannot_start_are_refused(
    teacher: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A minilm student of a CNN teacher, more layers than the teacher has, --student-layers for
    a CNN and a tokenizer option with the teacher's embeddings: refused in one line each."""
    cnn = tmp_path / "cnn-teacher"
    argv = ["train", "--data", str(teacher["data"]), "--output", str(cnn), "--model", "cnn"]
    assert main([*argv, *TINY]) == 0
    capsys.readouterr()
    cases = [
        (["minilm", "--teacher", str(cnn)], "--student minilm takes its layers from a BERT"),
        (["minilm", "--student-layers", "7"], "--student-layers 7 is invalid; accepted: an"),
        (["cnn", "--student-layers", "2"], "--student-layers 2 is for --student minilm"),
        (
            ["cnn", "--student-embeddings", "teacher", "--vocab-size", "300"],
            "--vocab-size 300 with --student-embeddings teacher",
        ),
        (  # the option as the command line spells it
            ["cnn", "--student-embeddings", "teacher", "--tokenizer", "bert"],
            "--tokenizer bert with --student-embeddings teacher",
        ),
        (["cnn", "--augment", "-1"], "--augment -1 is invalid; accepted: an integer >= 0"),
    ]
    out = tmp_path / "student"
    for (student, *extra), message in cases:
        assert main(distill_argv(teacher, out, student, *extra)) == 2, message
        err = capsys.readouterr().err
        assert message in err, err
        assert [line for line in err.splitlines() if "error" in line] == [err.strip()], err
        assert not out.exists()
