"""The n-gram model's convex fit (training.ngram_fit): TF-IDF weights and the objective as
scikit-learn's (the reference it stands in for), the model's forward equal to the fitted linear
model on both of its paths, C chosen on validation, the refit, and what it refuses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse

import fbdl_fast
from fbdl_fast.config import ModelConfig
from fbdl_fast.data import LabelMap, build_dataloaders, split_posts
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.models.ngram import NgramClassifier
from fbdl_fast.training import ngram_fit, presets
from fbdl_fast.training.request import TrainError, train_request
from fbdl_fast.training.session import train_tokenizer
from fbdl_fast.training.trainer import Trainer

BUCKETS = 1024


def tiny_model(posts, word_chars: bool = True, **extra: object):
    """A convex n-gram model of the defaults (BUCKETS rows) on `posts`' own tokenizer."""
    label_map = LabelMap.from_labels(posts.labels)
    tokenizer = train_tokenizer(posts.texts, 200)
    values = presets.config_defaults("ngram")
    values["extra"].update(ngram_buckets=BUCKETS, ngram_word_chars=word_chars, **extra)
    values.update(
        vocab_size=tokenizer.vocab_size,
        num_classes=len(label_map),
        pad_token_id=tokenizer.pad_token_id,
        max_seq_length=32,
    )
    config = ModelConfig(**values)
    model = NgramClassifier(config)
    model.index_char_ngrams(tokenizer)
    return tokenizer, label_map, model


def loaders(seed: int = 4, posts: int = 120, **extra: object):
    everything = generate_posts(posts, seed=seed)
    train, val = split_posts(everything, 0.25, 0, stratify=True)
    tokenizer, label_map, model = tiny_model(train, **extra)
    train_loader, val_loader = build_dataloaders(train, val, tokenizer, label_map, model.config)
    return model, train_loader, val_loader


def group_counts(found: ngram_fit.PostRows, group: int, width: int) -> sparse.csr_matrix:
    post, row = found.groups[group]
    values = np.ones(len(post))
    return sparse.csr_matrix((values, (post.numpy(), row.numpy())), shape=(found.posts, width))


def test_weights_are_tfidf_of_each_group_over_its_l2_norm() -> None:
    """idf is TfidfTransformer's (smoothed), per group, and 0 for a row no post has; a post's
    weights in each group are the row counts times idf, over the L2 norm of its occurrences'
    weights (a row twice adds its weight squared twice)."""
    from sklearn.feature_extraction.text import TfidfTransformer

    model, train_loader, _ = loaders()
    width = model.embedding.num_embeddings
    found = ngram_fit.post_rows(model, train_loader)
    idf = ngram_fit.inverse_document_frequency(found, width)
    want = np.zeros((found.posts, width))
    for group, group_idf in enumerate(idf.numpy()):
        counts = group_counts(found, group, width)
        reference = TfidfTransformer(smooth_idf=True).fit(counts)
        seen = np.asarray(counts.sum(0)).ravel() > 0
        assert np.allclose(group_idf[seen], reference.idf_[seen], atol=1e-5)
        assert (group_idf[~seen] == 0).all()  # never seen: no weight, as if dropped
        norms = np.sqrt(counts.multiply(group_idf**2).sum(1))
        want += counts.multiply(group_idf).toarray() / np.maximum(np.asarray(norms), 1e-12)
    got = ngram_fit.weighted_matrix(found, idf, width).to_dense().double().numpy()
    assert np.allclose(got, want, atol=1e-5)


def test_fit_reaches_scikit_learns_logistic_regression_on_the_same_rows() -> None:
    """One C, no refit: the coefficients and predictions of LogisticRegression(C) on the same
    weighted rows, and the model's forward, on its training path and on its cached predict
    path, gives the fitted linear model's logits."""
    from sklearn.linear_model import LogisticRegression

    model, train_loader, val_loader = loaders(ngram_c=[3.0], ngram_refit=False)
    fit = ngram_fit.fit_convex(model, train_loader, val_loader)
    assert fit.c == 3.0 and fit.refit_posts == 0
    width = model.embedding.num_embeddings
    found = ngram_fit.post_rows(model, train_loader)
    idf = ngram_fit.inverse_document_frequency(found, width)
    assert torch.equal(model.row_idf, idf)
    matrix = ngram_fit.weighted_matrix(found, idf, width).coalesce()
    indices, values = matrix.indices().numpy(), matrix.values().double().numpy()
    x = sparse.csr_matrix((values, (indices[0], indices[1])), shape=tuple(matrix.shape))
    reference = LogisticRegression(C=3.0, tol=1e-8, max_iter=5000).fit(x, found.labels.numpy())
    with torch.no_grad():
        batches = list(train_loader)
        cached = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in batches])
    with torch.enable_grad():
        gathered = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in batches])
    assert torch.allclose(cached, gathered.detach(), atol=1e-5)
    want = reference.decision_function(x)
    got = cached.double().numpy()
    assert (got.argmax(1) == reference.predict(x)).all()
    # Logits are defined up to a constant a post: compare them centred.
    assert np.allclose(
        got - got.mean(1, keepdims=True), want - want.mean(1, keepdims=True), atol=2e-3
    )
    # The held-out logits the run reports are the model's own on the validation posts.
    with torch.no_grad():
        val = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in val_loader])
    assert torch.allclose(val, fit.val_logits, atol=1e-5)


def test_c_is_the_grids_best_on_validation_then_refitted_on_all_posts() -> None:
    """Every C of the grid is scored on the validation posts, the best kept (the smaller on a
    tie); the refit's idf counts the training and validation posts together."""
    model, train_loader, val_loader = loaders(ngram_c=[0.01, 1.0, 100.0])
    fit = ngram_fit.fit_convex(model, train_loader, val_loader)
    assert list(fit.val_macro_f1) == [0.01, 1.0, 100.0]
    best = max(fit.val_macro_f1.values())
    assert fit.c == min(c for c, f1 in fit.val_macro_f1.items() if f1 == best)
    train = ngram_fit.post_rows(model, train_loader)
    both = train + ngram_fit.post_rows(model, val_loader)
    assert fit.refit_posts == both.posts > train.posts
    width = model.embedding.num_embeddings
    assert torch.equal(model.row_idf, ngram_fit.inverse_document_frequency(both, width))
    assert not torch.equal(model.row_idf, ngram_fit.inverse_document_frequency(train, width))
    assert f"C = {fit.c:g} chosen" in fit.summary() and "refitted" in fit.summary()


def test_class_weights_and_label_smoothing_change_the_objective() -> None:
    """Class weights weigh each post's loss and label smoothing its target: each moves the
    fitted weights."""
    model, train_loader, val_loader = loaders(ngram_c=[3.0], ngram_refit=False)
    tables = []
    weights = [5.0] + [1.0] * (model.config.num_classes - 1)
    for change in ({}, {"class_weights": weights}, {"label_smoothing": 0.2}):
        fitted = copy.deepcopy(model)
        config = ModelConfig(**{**model.config.to_dict(), **change})
        ngram_fit.fit_convex(fitted, train_loader, val_loader, config)
        tables.append(fitted.embedding.weight.detach().clone())
    assert not torch.allclose(tables[0], tables[1], atol=1e-4)
    assert not torch.allclose(tables[0], tables[2], atol=1e-4)


@pytest.mark.parametrize(
    ("change", "world_size", "message"),
    [
        ({"sampler": "balanced"}, 1, "sampler='balanced' has no effect"),
        ({}, 2, "runs in one process, not 2"),
        ({"loss": "focal"}, 1, "loss='focal': the n-gram model's convex fit minimises"),
        ({"ema_decay": 0.9}, 1, "ema_decay: the n-gram model's convex fit takes no optimizer"),
        ({"multi_label": True}, 1, "convex fit is for one label a post"),
        ({"extra": {"ngram_c": []}}, 1, "ngram_c=[] is invalid"),
        ({"extra": {"ngram_c": [1.0, -2.0]}}, 1, "ngram_c=[1.0, -2.0] is invalid"),
        ({"extra": {"ngram_c": "10"}}, 1, "ngram_c='10' is invalid"),
    ],
)
def test_what_the_convex_fit_cannot_do_is_refused(change, world_size, message) -> None:
    config = ModelConfig(num_classes=3, **change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ngram_fit.check_convex(config, world_size)


def test_settings_the_convex_fit_does_not_read_are_refused_by_name() -> None:
    """Asking a convex n-gram run for a learning rate or epochs is an error naming them; the
    gradient fit (extra) and a multi-label run (whose defaults are the gradient fit's) take
    them."""
    with pytest.raises(TrainError, match=r"^learning_rate, max_epochs: not used by the n-gram"):
        train_request("ngram", data="p.csv", lr=0.1, epochs=3)
    with pytest.raises(TrainError, match=r"^optimizer_type, gradient_clip: not used by the"):
        train_request("ngram", data="p.csv", optimizer_type="sgd", gradient_clip=0.5)
    with pytest.raises(TrainError, match=r"^sampler='balanced' has no effect on the n-gram"):
        train_request("ngram", data="p.csv", sampler="balanced")  # before any data is read
    gradient = {**presets.NGRAM_DEFAULTS["extra"], "ngram_fit": "gradient"}
    _, config = train_request("ngram", data="p.csv", lr=0.1, extra=gradient)
    assert config.learning_rate == 0.1  # and the rest is that fit's defaults, not the convex's
    assert config.label_smoothing == presets.NGRAM_DEFAULTS["label_smoothing"] > 0
    assert config.extra == gradient
    _, config = train_request("ngram", data="p.csv", epochs=3, multi_label=True)
    assert config.extra["ngram_fit"] == "gradient" and config.max_epochs == 3


def test_a_convex_run_reports_the_held_out_fit_and_serves_the_refit(tmp_path: Path) -> None:
    """A run of the defaults is one fitted epoch: its validation figures (history, metrics
    line, report.md's evaluation) are those of the fit that never saw the validation posts,
    while best.pt holds the refit; report.md says which C and that it refitted."""
    posts = generate_posts(160, seed=2)
    result = fbdl_fast.train(
        texts=posts.texts, labels=posts.labels, model="ngram", output=tmp_path / "run",
        vocab_size=200, max_seq_length=32,
    )  # fmt: skip
    assert result.history.epochs == 1
    run = fbdl_fast.load_run(result.run_dir)
    assert run.model.convex and float(run.model.row_idf.sum()) > 0
    train, val = split_posts(posts, 0.1, run.config.seed, stratify=True)
    label_map = LabelMap.load(result.run_dir / "label_map.json")
    train_loader, val_loader = build_dataloaders(train, val, run.tokenizer, label_map, run.config)
    held_out = copy.deepcopy(run.model)
    extra = {**run.config.extra, "ngram_refit": False}
    config = ModelConfig(**{**run.config.to_dict(), "extra": extra})
    fit = ngram_fit.fit_convex(held_out, train_loader, val_loader, config)
    trainer = Trainer(held_out, run.config, label_map=label_map)
    assert result.best["val_macro_f1"] == trainer.evaluate(val_loader)["macro_f1"]
    line = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert line["val_f1"] == result.best["val_macro_f1"] and line["best"]
    served = Trainer(run.model, run.config, label_map=label_map).evaluate(val_loader)
    assert served["loss"] < trainer.evaluate(val_loader)["loss"]  # the refit saw these posts
    report = (result.run_dir / "report.md").read_text()
    assert f"C = {fit.c:g} chosen by validation macro-F1" in report
    assert f"refitted with it on all {len(posts)} posts" in report
    assert "## Validation posts, the fit without them (best.pt: refitted with them)" in report
    assert "| 1 (best) |" in report and "| — |" in report  # no learning rate to show


def test_resuming_a_finished_convex_run_keeps_its_held_out_report(tmp_path: Path) -> None:
    """Resuming a finished run writes its report again: a convex run's must still judge the
    fit that never saw the validation posts (from last.pt), not best.pt's refit, which did."""
    posts = generate_posts(160, seed=2)
    fields = {"texts": posts.texts, "labels": posts.labels, "model": "ngram"}
    fields |= {"output": tmp_path / "run", "vocab_size": 200, "max_seq_length": 32}
    first = fbdl_fast.train(**fields)
    report = (first.run_dir / "report.md").read_text()
    again = fbdl_fast.train(**fields, resume=True)
    assert again.best == first.best
    assert (again.run_dir / "report.md").read_text() == report
