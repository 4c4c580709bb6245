"""--augment's transfer set (training.augment, distill.Distillation.transfer_set): variants
drawn from the seed alone, each change at its rate on a fixed input, bad settings named, and the
teacher's logits over them cached, reused and recomputed when a setting changes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.data import load_posts, split_posts
from fbdl_fast.training import distill
from fbdl_fast.training.augment import AugmentSettings, augment_texts
from fbdl_fast.training.distill import TRANSFER_SET, Distillation
from tiny_run import make_run, tiny_model_args, write_posts_csv

# 200 posts of 20 words, every word distinct: a changed word is told from a kept one.
POSTS = [" ".join(f"p{i}w{j}" for j in range(20)) for i in range(200)]
NONE = {"mask": 0.0, "replace": 0.0, "ngram": 0.0, "shuffle": 0.0}


def _settings(**changes: float) -> AugmentSettings:
    return AugmentSettings(variants=5, **{**NONE, **changes})  # type: ignore[arg-type]


def test_variants_are_drawn_from_the_seed_alone() -> None:
    """The same texts, settings and seed give the same variants; another seed others; the
    variants of each post follow each other, N per post; a post with no words stays empty."""
    settings = AugmentSettings(variants=3)
    first = augment_texts(POSTS[:20], settings, seed=7)
    assert first == augment_texts(POSTS[:20], settings, seed=7)
    assert first != augment_texts(POSTS[:20], settings, seed=8)
    assert len(first) == 60
    for i, variant in enumerate(first):  # a variant keeps a third of its post's words or more
        words = variant.split()
        assert sum(w.startswith(f"p{i // 3}w") for w in words) >= len(words) / 3, variant
    assert augment_texts(["", "a b"], AugmentSettings(variants=2), seed=0)[:2] == ["", ""]
    assert augment_texts(POSTS, AugmentSettings(variants=0), seed=0) == []
    # With every probability 0 a variant is its post.
    assert augment_texts(POSTS[:4], _settings(), seed=0) == [p for p in POSTS[:4] for _ in "12345"]


def test_masking_and_replacement_change_words_at_their_rates() -> None:
    """mask=0.2: about a fifth of the words become [MASK], in place, the others kept; replace=0.3:
    about 30% become words of other posts (the training posts' words), in place."""
    masked = augment_texts(POSTS, _settings(mask=0.2), seed=1)
    words = [(w, j) for i, v in enumerate(masked) for j, w in enumerate(v.split())]
    assert all(len(v.split()) == 20 for v in masked)
    share = sum(w == "[MASK]" for w, _ in words) / len(words)
    assert 0.18 <= share <= 0.22, share
    for i, variant in enumerate(masked):
        for j, word in enumerate(variant.split()):
            assert word in ("[MASK]", f"p{i // 5}w{j}")

    replaced = augment_texts(POSTS, _settings(replace=0.3), seed=1)
    known = {w for p in POSTS for w in p.split()}
    changed = kept = 0
    for i, variant in enumerate(replaced):
        for j, word in enumerate(variant.split()):
            assert word in known
            changed += word != f"p{i // 5}w{j}"
            kept += word == f"p{i // 5}w{j}"
    assert 0.28 <= changed / (changed + kept) <= 0.32, changed / (changed + kept)


def test_ngram_sampling_keeps_a_span_and_shuffling_reorders_three_spans() -> None:
    """ngram=1: every variant is a contiguous span of its post of ceil(n/2) to n-1 words;
    shuffle=1: every variant has its post's words, in another order made of at most three
    contiguous runs of the original."""
    for i, variant in enumerate(augment_texts(POSTS, _settings(ngram=1.0), seed=2)):
        words, post = variant.split(), POSTS[i // 5]
        assert math.ceil(20 / 2) <= len(words) <= 19
        assert f" {variant} " in f" {post} "
    for i, variant in enumerate(augment_texts(POSTS, _settings(shuffle=1.0), seed=2)):
        words, post = variant.split(), POSTS[i // 5].split()
        assert sorted(words) == sorted(post) and words != post
        # runs: places where the next word is not the original's next
        breaks = sum(post.index(b) != post.index(a) + 1 for a, b in zip(words, words[1:]))
        assert 1 <= breaks <= 2


def test_bad_settings_are_named() -> None:
    """A negative or non-integer count, a probability outside [0, 1] and a mask token with a
    space are refused, naming the setting and what is accepted."""
    with pytest.raises(ValueError, match=r"--augment -1 is invalid; accepted: an integer >= 0"):
        AugmentSettings(variants=-1)
    with pytest.raises(ValueError, match=r"--augment 1.5 is invalid"):
        AugmentSettings(variants=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mask=1.5 is invalid; accepted: a probability"):
        AugmentSettings(variants=1, mask=1.5)
    with pytest.raises(ValueError, match=r"mask_token='\[MA SK\]' is invalid"):
        AugmentSettings(variants=1, mask_token="[MA SK]")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("augment") / "teacher")


def test_transfer_set_is_cached_reused_and_remade_when_a_setting_changes(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teacher labels the variants once: a second call on the folder reads them back (the
    teacher is not called); another probability, count or seed makes them again."""
    calls: list[int] = []
    original = distill.compute_logits

    def counting(run, texts, batch_size=None):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(run, texts, batch_size)

    monkeypatch.setattr(distill, "compute_logits", counting)
    texts = POSTS[:10]
    settings = AugmentSettings(variants=2)
    d = Distillation.load(teacher, augment=settings)
    labels = d.teacher.label_map
    variants, logits = d.transfer_set(tmp_path, texts, labels, seed=3)
    assert calls == [20] and variants == augment_texts(texts, settings, 3)
    torch.testing.assert_close(logits, original(d.teacher, variants), rtol=0, atol=0)
    again, cached = d.transfer_set(tmp_path, texts, labels, seed=3)
    assert calls == [20] and again == variants and torch.equal(cached, logits)
    stored = load_checkpoint(tmp_path / TRANSFER_SET)
    assert stored["texts"] == variants and stored["settings"]["variants"] == 2

    for changed, seed in (
        (AugmentSettings(variants=2, mask=0.3), 3),
        (AugmentSettings(variants=3, mask=0.3), 3),
        (AugmentSettings(variants=3, mask=0.3), 4),
    ):
        calls.clear()
        d.augment = changed
        remade, _ = d.transfer_set(tmp_path, texts, labels, seed=seed)
        assert calls == [len(remade)] and remade == augment_texts(texts, changed, seed)
    calls.clear()
    d.transfer_set(tmp_path, texts, labels, seed=4)
    assert calls == []


def test_distill_augment_trains_on_the_variants_and_resume_reuses_them(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """distill --augment 2: the teacher labels the training split, then 2 variants a post;
    config.json records the settings; --resume of the run calls the teacher for neither;
    --augment with --alpha 0 is refused."""
    calls: list[int] = []
    original = distill.compute_logits

    def counting(run, texts, batch_size=None):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(run, texts, batch_size)

    monkeypatch.setattr(distill, "compute_logits", counting)
    data = write_posts_csv(tmp_path / "posts.csv", 80, seed=5)
    out = tmp_path / "student"
    argv = ["distill", "--teacher", str(teacher), "--data", str(data), "--output", str(out)]
    argv += ["--student", "cnn", "--epochs", "1", *tiny_model_args(max_length=24)[2:]]
    argv += ["--threads", "1", "--quiet", "--augment", "2"]
    assert main(argv) == 0
    train = split_posts(load_posts(data, "text", "label"), 0.1, 42)[0]
    assert calls == [len(train), 2 * len(train)]
    assert load_checkpoint(out / TRANSFER_SET)["texts"] == augment_texts(
        train.texts, AugmentSettings(variants=2), 42
    )
    calls.clear()
    assert main([*argv, "--resume"]) == 0
    assert calls == []
    assert main([*argv[:-2], "--augment", "2", "--alpha", "0"]) == 2

    # The default: 2 variants a post with no --unlabelled; none with it, or with --alpha 0.
    calls.clear()
    default = tmp_path / "default"
    assert main([*argv[:-2], "--output", str(default)]) == 0
    assert calls == [len(train), 2 * len(train)]
    unlabelled = write_posts_csv(tmp_path / "more.csv", 10, seed=6)
    for extra in (["--unlabelled", str(unlabelled)], ["--alpha", "0"]):
        calls.clear()
        assert main([*argv[:-2], "--output", str(tmp_path / "none"), "--overwrite", *extra]) == 0
        assert len(calls) == 1 and not (tmp_path / "none" / TRANSFER_SET).exists(), extra
