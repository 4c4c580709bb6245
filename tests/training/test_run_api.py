"""fbdl_fast.load_run(path) -> Run: predict (labels, probabilities, multi-label sets at the
thresholds, input order), evaluate (the numbers of `fbdl-fast evaluate --json`), torch's threads
set for each call and put back, and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import fbdl_fast
from fbdl_fast.checkpoint import add_calibration, load_checkpoint, save_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.config import ModelConfig
from fbdl_fast.data import load_posts, loader_order
from fbdl_fast.data.synthetic import CLASSES, generate_posts
from fbdl_fast.models import create_model
from fbdl_fast.training import loading
from fbdl_fast.training.loading import MultiLabelEvaluation, Run, RunEvaluation, load_run
from fbdl_fast.training.trainer import BEST_CHECKPOINT, Trainer
from tiny_run import MAX_LENGTH, make_run, write_csv, write_posts_csv

TEMPERATURE = 2.5
# Each text alone against texts batched with padding: equal up to float rounding.
ALONE = 2e-6


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny single-label CNN run whose best.pt carries a calibration temperature."""
    folder = make_run(tmp_path_factory.mktemp("single") / "run")
    add_calibration(folder / BEST_CHECKPOINT, {"temperature": TEMPERATURE})
    return folder


def _multi_label(folder: Path, thresholds: list[float] | None) -> Path:
    """make_run's folder turned into a multi-label run (labels "a|b" in files), best.pt with
    `thresholds` as tuned ones (None: none tuned)."""
    make_run(folder)
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    meta["model_config"]["multi_label"] = True
    meta["data"]["label_separator"] = "|"
    (folder / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    config = ModelConfig.from_dict(meta["model_config"])
    path = Trainer(create_model("cnn", config), config, device="cpu").save_checkpoint(
        folder / BEST_CHECKPOINT
    )
    if thresholds is not None:
        state = load_checkpoint(path)
        state.pop("format_version")
        save_checkpoint({**state, "thresholds": thresholds}, path)
    return folder


def _alone(run: Run, text: str) -> list[float]:
    """The class probabilities of `text` predicted on its own: the model on its ids, no
    padding, softmax(logits / T)."""
    ids = torch.as_tensor(run.tokenizer.encode_batch([text], max_length=MAX_LENGTH).input_ids)
    with torch.no_grad():
        logits = run.model.eval()(ids, torch.ones_like(ids, dtype=torch.bool)).float()
    return torch.softmax(logits / run.temperature, dim=-1)[0].tolist()


# ----------------------------------------------------------------------------- predict


def test_predict_single_label_gives_label_probability_and_calibrated_probabilities(
    single: Path,
) -> None:
    """Each Prediction holds the most probable class, its probability and every class's,
    calibrated with best.pt's temperature (not the plain softmax); no label set."""
    run = fbdl_fast.load_run(single)
    assert run.temperature == TEMPERATURE and run.checkpoint.name == "best.pt"
    texts = generate_posts(6, seed=2).texts
    predictions = run.predict(texts)
    for text, p in zip(texts, predictions):
        expected = _alone(run, text)
        assert list(p.probabilities) == list(CLASSES)
        assert list(p.probabilities.values()) == pytest.approx(expected, abs=ALONE)
        best = max(range(len(CLASSES)), key=expected.__getitem__)
        assert (p.label, p.probability) == (CLASSES[best], p.probabilities[CLASSES[best]])
        assert p.labels is None and p.label_probabilities is None
    plain = fbdl_fast.load_run(single, checkpoint=str(single / BEST_CHECKPOINT))
    assert plain.checkpoint == single / BEST_CHECKPOINT  # a path names the same file
    with torch.no_grad():  # the probabilities are not softmax(logits): T divides them
        logits = torch.log(torch.tensor(list(predictions[0].probabilities.values())))
        assert (
            torch.softmax(logits * TEMPERATURE, -1) - torch.tensor(_alone(run, texts[0]))
        ).abs().max() > 1e-3


def test_predict_keeps_input_order_across_lengths_batches_and_chunks(single: Path) -> None:
    """Texts of mixed lengths, which the loader reorders by length, come back in input order,
    each with the probabilities it gets alone; predict_iter's chunks change nothing."""
    run = load_run(single)
    words = generate_posts(40, seed=4).texts
    texts = [" ".join(words[: (7 * i) % 11 + 1]) for i in range(10)]
    texts[3], texts[7] = "", "hi"
    assert loader_order(run.loader(texts, None, 2)) != list(range(10))  # reordered inside
    predictions = run.predict(texts, batch_size=2)
    assert [p.text for p in predictions] == texts
    for text, p in zip(texts, predictions):
        assert list(p.probabilities.values()) == pytest.approx(_alone(run, text), abs=ALONE)
    streamed = list(run.predict_iter(iter(texts), batch_size=2, chunk=3))
    assert [p.text for p in streamed] == texts
    for p, q in zip(streamed, predictions):  # other batches: equal up to float rounding
        assert p.label == q.label
        assert list(p.probabilities.values()) == pytest.approx(
            list(q.probabilities.values()), abs=ALONE
        )
    assert [len(c) for c in run.predict_chunks(texts, batch_size=2, chunk=3)] == [3, 3, 3, 1]


def test_predict_multi_label_gives_the_label_sets_at_the_thresholds(tmp_path: Path) -> None:
    """A multi-label run's label sets are the classes at or above the checkpoint's tuned
    thresholds (0.5 where it has none), with their probabilities, in class order."""
    texts = generate_posts(12, seed=5).texts
    untuned = load_run(_multi_label(tmp_path / "untuned", None))
    assert untuned.thresholds is None
    at_half = untuned.predict(texts)
    for p in at_half:
        assert p.labels == tuple(n for n, v in p.probabilities.items() if v >= 0.5)
    # Thresholds that split the posts: each class's median probability over them.
    columns = [sorted(p.probabilities[name] for p in at_half) for name in CLASSES]
    thresholds = [column[len(texts) // 2] for column in columns]
    tuned = load_run(_multi_label(tmp_path / "tuned", thresholds))
    assert tuned.thresholds == thresholds
    predictions = tuned.predict(texts)
    for p, q in zip(predictions, at_half):
        assert p.probabilities == pytest.approx(q.probabilities, abs=1e-6)  # same weights
        chosen = [i for i, name in enumerate(CLASSES) if p.probabilities[name] >= thresholds[i]]
        assert p.labels == tuple(CLASSES[i] for i in chosen)
        assert p.label_probabilities == tuple(p.probabilities[CLASSES[i]] for i in chosen)
        assert p.label == max(p.probabilities, key=p.probabilities.__getitem__)
    assert [p.labels for p in predictions] != [q.labels for q in at_half]  # they were used


def test_int8_of_a_multi_label_run_keeps_its_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.int8.pt carries the tuned thresholds; a file written before it did (no
    "thresholds" key) takes those of the checkpoint it was made from, not 0.5."""
    thresholds = [0.3, 0.45, 0.55, 0.7]
    folder = _multi_label(tmp_path / "run", thresholds)
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    capsys.readouterr()
    path = folder / "model.int8.pt"
    state = load_checkpoint(path)
    assert state["thresholds"] == thresholds
    texts = generate_posts(8, seed=6).texts

    def check() -> None:
        run = load_run(folder, checkpoint="int8")
        assert run.thresholds == thresholds and run.checkpoint == path
        for p in run.predict(texts):
            assert p.labels == tuple(
                name for name, t in zip(CLASSES, thresholds) if p.probabilities[name] >= t
            )

    check()  # the file carries them
    del state["thresholds"], state["format_version"]
    save_checkpoint(state, path)  # as files were written before they carried them
    check()


# ----------------------------------------------------------------------------- evaluate


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main([*argv, "--json", "--quiet"]) == 0
    return capsys.readouterr().out


def test_evaluate_equals_the_cli_json_single_label(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run.evaluate(file).to_dict() prints as `fbdl-fast evaluate --json` does, to the byte;
    Posts give the same; its accuracy is that of predict's labels."""
    data = write_posts_csv(tmp_path / "test.csv", 40, seed=6)
    out = _cli_json(["evaluate", "--run", str(single), "--data", str(data)], capsys)
    run = load_run(single)
    result = run.evaluate(str(data))
    assert isinstance(result, RunEvaluation)
    assert json.dumps(result.to_dict(), indent=2) + "\n" == out
    assert run.evaluate(load_posts(data)).to_dict() == json.loads(out)  # source: the same path
    posts = load_posts(data)
    right = [p.label == label for p, label in zip(run.predict(posts.texts), posts.labels or [])]
    assert result.num_samples == 40 and result.accuracy == sum(right) / 40
    assert result.checkpoint == "best.pt" and result.details.temperature == TEMPERATURE


def test_evaluate_equals_the_cli_json_multi_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A multi-label run's evaluate: subset accuracy, micro/macro-F1, Hamming loss at its
    thresholds, as `evaluate --json` prints them; subset accuracy is predict's."""
    thresholds = [0.3, 0.45, 0.55, 0.7]
    folder = _multi_label(tmp_path / "run", thresholds)
    posts = generate_posts(30, seed=7)
    rows = [
        (t, f"{label}|spam" if i % 3 == 0 else label)
        for i, (t, label) in enumerate(zip(posts.texts, posts.labels or []))
    ]
    data = write_csv(tmp_path / "test.csv", rows)
    out = _cli_json(["evaluate", "--run", str(folder), "--data", str(data)], capsys)
    run = load_run(folder)
    result = run.evaluate(data)
    assert isinstance(result, MultiLabelEvaluation)
    assert json.dumps(result.to_dict(), indent=2) + "\n" == out
    assert result.thresholds == dict(zip(CLASSES, thresholds))
    truth = [set(label.split("|")) for _, label in rows]
    right = [set(p.labels or ()) == t for p, t in zip(run.predict(posts.texts), truth)]
    assert result.subset_accuracy == pytest.approx(sum(right) / len(rows))


# ----------------------------------------------------------------------------- threads


@pytest.fixture
def three_threads() -> Iterator[None]:
    """torch at 3 intra-op threads for the test (a value no Run below asks for)."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_threads_are_set_for_each_call_and_restored_also_on_error(
    single: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, three_threads: None
) -> None:
    """predict and evaluate run at the Run's threads (default 1; None: torch's setting) and
    leave torch at its own setting afterwards, also when they fail."""
    seen: list[int] = []
    run = load_run(single)
    assert run.threads == loading.DEFAULT_THREADS == 1
    real_predict, real_outputs = run.trainer.predict, run.trainer.outputs

    def predict(loader):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return real_predict(loader)

    def outputs(loader):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return real_outputs(loader)

    monkeypatch.setattr(run.trainer, "predict", predict)
    monkeypatch.setattr(run.trainer, "outputs", outputs)
    run.predict(["hello"])
    run.evaluate(write_posts_csv(tmp_path / "p.csv", 8, seed=1))
    run.threads = 2
    run.predict(["hello"])
    run.threads = None
    run.predict(["hello"])
    assert seen == [1, 1, 2, 3]
    assert torch.get_num_threads() == 3

    def broken(loader):  # type: ignore[no-untyped-def]
        raise RuntimeError("the model failed")

    run.threads = 1
    monkeypatch.setattr(run.trainer, "predict", broken)
    monkeypatch.setattr(run.trainer, "outputs", broken)
    with pytest.raises(RuntimeError, match="the model failed"):
        run.predict(["hello"])
    with pytest.raises(RuntimeError, match="the model failed"):
        run.evaluate(tmp_path / "p.csv")
    assert torch.get_num_threads() == 3


def test_onnx_session_threads_come_from_load_run(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """load_run(checkpoint="onnx", threads=N): onnxruntime's intra-op threads are N."""
    import shutil

    folder = Path(shutil.copytree(single, tmp_path / "run"))
    assert main(["export", "--run", str(folder), "--format", "onnx", "--quiet"]) == 0
    for threads in (1, 2):
        model = load_run(folder, checkpoint="onnx", threads=threads).model
        assert model.session.get_session_options().intra_op_num_threads == threads


# ----------------------------------------------------------------------------- bad input


def test_bad_input(single: Path, tmp_path: Path) -> None:
    """An empty input predicts nothing; an item that is not a str is refused naming its
    position (also in a later chunk); a lone str, a non-iterable, bad threads, batch sizes,
    int8/onnx on a GPU and evaluate data of another type are refused, each naming the value."""
    run = load_run(single)
    assert run.predict([]) == [] and run.predict(iter(())) == []
    with pytest.raises(TypeError, match=r"texts\[5\] is 7 \(int\); predict takes an iterable"):
        run.predict(["a", "b", "c", "d", "e", 7], batch_size=1)
    with pytest.raises(TypeError, match=r"texts\[5\] is None \(NoneType\)"):
        list(run.predict_iter(["a", "b", "c", "d", "e", None], batch_size=1, chunk=2))
    with pytest.raises(TypeError, match=r"texts is one str \('hello'\); .* pass \[text\]"):
        run.predict("hello")
    with pytest.raises(TypeError, match="texts is a int, not an iterable"):
        run.predict(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_size=0 is not accepted; expected an integer"):
        run.predict(["a"], batch_size=0)
    with pytest.raises(ValueError, match=r"chunk=-1 is not accepted"):
        run.predict_iter(["a"], chunk=-1).__next__()
    with pytest.raises(ValueError, match=r"threads=0 is not accepted; expected an integer >= 1"):
        load_run(single, threads=0)
    with pytest.raises(ValueError, match=r"checkpoint='int8' runs on the CPU only, not device="):
        load_run(single, checkpoint="int8", device="cuda")
    with pytest.raises(TypeError, match=r"data is a list; accepted: the path of a posts file"):
        run.evaluate([("good", "positive")])  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # the old positional (path, device) call
        load_run(single, "cpu")  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"device='bogus' is not supported; accepted: cpu, cuda"):
        load_run(single, device="bogus")
    with pytest.raises(TypeError, match="path is a NoneType; load_run takes a run folder's path"):
        load_run(None)  # type: ignore[arg-type]


def test_class_probabilities_reads_texts_as_predict_does(single: Path) -> None:
    """class_probabilities takes what predict takes (any iterable of str: a generator, a numpy
    array) and refuses what it refuses: one str (not its characters as posts), None, a non-str
    item, a bad batch size; numpy's integers count as integers, here and for predict."""
    import numpy as np

    run = load_run(single)
    texts = ["so happy today", "my order never arrived", "ok"]
    want = [[p.probabilities[name] for name in run.names] for p in run.predict(texts)]
    for given in (iter(texts), np.array(texts), tuple(texts)):
        np.testing.assert_allclose(run.class_probabilities(given), want, rtol=1e-6)
    assert run.class_probabilities(iter(())) == []
    with pytest.raises(TypeError, match=r"texts is one str \('hello'\); class_probabilities"):
        run.class_probabilities("hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="texts is a NoneType, not an iterable"):
        run.class_probabilities(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] is 3 \(int\); class_probabilities"):
        run.class_probabilities(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"batch_size=0 is not accepted"):
        run.class_probabilities(["a"], batch_size=0)
    np.testing.assert_allclose(
        run.class_probabilities(texts, batch_size=np.int64(2)), want, rtol=1e-5
    )
    assert [p.label for p in run.predict(texts, batch_size=np.int64(1))] == [
        p.label for p in run.predict(texts)
    ]


def test_load_run_and_run_are_public_names() -> None:
    """`fbdl_fast.load_run` and `fbdl_fast.Run` are the library's, listed in __all__."""
    assert fbdl_fast.load_run is load_run and fbdl_fast.Run is Run
    assert {"load_run", "Run"} <= set(fbdl_fast.__all__)


def test_a_label_map_that_differs_from_the_checkpoints_shows_how_many_labels_it_cut(
    tmp_path: Path,
) -> None:
    """label_map.json edited against best.pt: the refusal shows each list's first five labels
    and how many more each has, not a list silently cut to five."""
    from fbdl_fast.data import LabelMap
    from fbdl_fast.runs import RunError
    from tiny_run import make_run

    classes = tuple(f"class{i}" for i in range(7))
    folder = make_run(tmp_path / "run", classes=classes)
    run = load_run(folder)
    run.trainer.label_map = LabelMap(list(classes))
    run.trainer.save_checkpoint(folder / "best.pt")  # best.pt records the labels it learned
    LabelMap(list(reversed(classes))).save(folder / "label_map.json")
    with pytest.raises(RunError, match=r"'class2'\] and 2 more, the model was trained with"):
        load_run(folder)
