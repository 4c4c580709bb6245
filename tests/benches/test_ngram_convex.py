"""benches/studies/ngram_convex.py: its TF-IDF weights and its fit are scikit-learn's, on the
model's own rows (scikit-learn is the reference the study stands in for)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse

from fbdl_fast.data import LabelMap, build_dataloaders
from fbdl_fast.data.synthetic import generate_posts
from tiny_run import load_bench_script, write_posts_csv

study = load_bench_script("studies/ngram_convex.py")


def tiny_rows(buckets: int = 512, word_chars: bool = False) -> tuple[list, int, int]:
    """The study's per-batch rows of 90 synthetic posts (model with character n-grams)."""
    posts = generate_posts(90, seed=4)
    label_map = LabelMap.from_labels(posts.labels)
    tokenizer, model = study.ngram_model(
        posts, label_map, buckets, vocab_size=200, word_chars=word_chars
    )
    loader = build_dataloaders(posts, posts, tokenizer, label_map, model.config)[1]
    return study.post_rows(model, loader), model.embedding.num_embeddings, len(label_map)


def group_counts(batches: list, group: int, width: int) -> sparse.csr_matrix:
    """(posts, width) counts of one group's rows, in loader order."""
    blocks = []
    for groups, _ in batches:
        rows, real = groups[group]
        post, slot = real.nonzero(as_tuple=True)
        values = np.ones(len(post))
        coo = (values, (post.numpy(), rows[post, slot].numpy()))
        blocks.append(sparse.csr_matrix(coo, shape=(rows.shape[0], width)))
    return sparse.vstack(blocks).tocsr()


def test_weights_are_tfidf_of_each_group_over_its_l2_norm() -> None:
    """idf is TfidfTransformer's (smoothed), per group, and 0 for a row no post has; a post's
    weights in each group are the row counts times idf, over the L2 norm of its occurrences'
    weights."""
    from sklearn.feature_extraction.text import TfidfTransformer

    batches, width, _ = tiny_rows()
    counts = [group_counts(batches, g, width) for g in (0, 1)]
    idf = study.inverse_document_frequency(batches, width)
    for group, group_idf in zip(counts, idf):
        reference = TfidfTransformer(smooth_idf=True).fit(group)
        seen = np.asarray(group.sum(0)).ravel() > 0
        assert np.allclose(group_idf.numpy()[seen], reference.idf_[seen], atol=1e-5)
        assert (group_idf.numpy()[~seen] == 0).all()  # never seen: no weight, as if dropped
    rows, weights, offsets, _ = study.weighted_bags(batches, idf)
    posts = counts[0].shape[0]
    dense = torch.zeros(posts, width, dtype=torch.float64)
    ends = torch.cat([offsets[1:], torch.tensor([rows.shape[0]])])
    for post, (start, end) in enumerate(zip(offsets.tolist(), ends.tolist())):
        dense[post].index_add_(0, rows[start:end], weights[start:end].double())
    want = np.zeros((posts, width))
    for group, group_idf in zip(counts, idf):
        tfidf = group.multiply(group_idf.numpy()).toarray()
        # The norm of the occurrences' weights: a row twice adds its weight squared twice.
        norms = np.sqrt(group.multiply(group_idf.numpy() ** 2).sum(1))
        want += tfidf / np.maximum(np.asarray(norms), 1e-12)
    assert np.allclose(dense.numpy(), want, atol=1e-5)


def test_fit_reaches_scikit_learns_logistic_regression_on_the_same_rows() -> None:
    """The L-BFGS fit minimises scikit-learn's objective: the same coefficients and predictions
    as LogisticRegression(C) on the same weighted rows."""
    from sklearn.linear_model import LogisticRegression

    batches, width, classes = tiny_rows()
    idf = study.inverse_document_frequency(batches, width)
    *bags, labels = study.weighted_bags(batches, idf)
    fitted = study.fit(tuple(bags), labels, width, classes, 3.0)
    rows, weights, offsets = bags
    ends = torch.cat([offsets[1:], torch.tensor([rows.shape[0]])])
    post = torch.repeat_interleave(torch.arange(len(offsets)), ends - offsets)
    x = sparse.csr_matrix(
        (weights.double().numpy(), (post.numpy(), rows.numpy())), shape=(len(offsets), width)
    )
    reference = LogisticRegression(C=3.0, tol=1e-8, max_iter=5000).fit(x, labels.numpy())
    ours = study.scores(tuple(bags), fitted["table"], fitted["bias"])
    assert (ours.argmax(1).numpy() == reference.predict(x)).all()
    # Logits are defined up to a constant a post: compare them centred.
    want = reference.decision_function(x)
    got = ours.double().numpy()
    assert np.allclose(
        got - got.mean(1, keepdims=True), want - want.mean(1, keepdims=True), atol=2e-3
    )


def test_the_study_prints_a_line_per_task_and_c(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    task = tmp_path / "task"
    task.mkdir()
    write_posts_csv(task / "train.csv", 120, seed=1)
    write_posts_csv(task / "test.csv", 40, seed=2)
    argv = ["--task", str(task), "--buckets", "1024", "--c", "1", "10", "--held-out", "0.1"]
    lines = study.main(argv)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == lines and [line["c"] for line in lines] == [1.0, 10.0]
    assert all(0.0 <= line["test_macro_f1"] <= 1.0 for line in lines)
    assert lines[0]["train_posts"] == 108  # 10% of 120 held out, as `train` holds them out


def test_word_chars_add_the_whole_word_character_ngrams_to_the_character_group() -> None:
    """--word-chars: the character group also holds the n-grams across a word's pieces and at
    its end, so each post has more of them; the n-gram group is the same."""
    plain, with_words = tiny_rows()[0], tiny_rows(word_chars=True)[0]
    for (groups, _), (word_groups, _) in zip(plain, with_words):
        assert torch.equal(groups[0][0], word_groups[0][0])
        assert (word_groups[1][1].sum(1) > groups[1][1].sum(1)).any()
        assert (word_groups[1][1].sum(1) >= groups[1][1].sum(1)).all()
