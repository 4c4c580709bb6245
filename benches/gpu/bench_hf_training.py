"""A fine-tuning step of fbdl_fast's BERT against Hugging Face transformers', same weights, one
process: the figure that decides whether fbdl_fast is worth it for MiniLM or bert-base.

One step = forward under bf16 autocast, cross-entropy, backward, AdamW (fbdl_fast.reports.speed.
training_step) on one batch of real posts: the texts of examples/posts.csv, tokenized by a
WordPiece vocabulary learnt from them, padded to the batch's longest post (at most 128 tokens).
Variants, each on its own copy of the same weights, timed in turns (peers.measure_row:
measure.time_in_turns, CUDA events, L2 flushed, median and p20-p80; posts/s and peak memory):
- HF eager: transformers.BertForSequenceClassification with attn_implementation="sdpa";
- HF torch.compile: the same, compiled (dynamic=False);
- ours reference: fbdl_fast's models/bert.py (torch's layers);
- ours patched: the same after fbdl_fast.patch (fused LayerNorm and attention);
- ours patched torch.compile: that, compiled.
The weights: HF's random initialisation (seed 0), copied into ours with fbdl_fast's BERT loader
(models.bert.load_pretrained, as for the MiniLM checkpoint). Dropout is 0 on both sides, so that
a step computes one function. The heads differ (HF: pooler dense + tanh over [CLS], then the
classifier; ours: a linear head over [CLS]), so the parity checks before timing are:
- the encoders' last hidden states, real tokens only, ours and HF's against HF's in fp32: fp32
  within 1e-3 (the weights are the same), and ours in bf16 autocast within twice HF's own bf16
  error (or 2e-2);
- each variant's first-step loss against its family's fp32 eager loss (HF's for HF, ours for
  ours), relative, reported as the variant's `error`; ours must be within 5e-2.

Shapes: MiniLM (hidden 384, 6 layers, 12 heads, feed-forward 1,536) and bert-base (768, 12, 12,
3,072), 64 posts a step on CUDA; on a CPU one tiny encoder (hidden 32, 2 layers) under both names
and 4 posts, so that gpu_check --cpu-smoke runs every variant, torch.compile and transformers
included.
gpu_check runs MiniLM in its second stage and bert-base only when asked (`--only "bert-base vs
HF"`): its two compiles do not fit the 8 minutes (docs/gpu-budget.md).
"""

from __future__ import annotations

import copy
import csv
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import peers
from fbdl_fast import ModelConfig, Tokenizer, create_model, patch
from fbdl_fast.models.bert import load_pretrained
from fbdl_fast.reports.speed import training_step
from measure import CUDA

DEVICE = "cuda" if CUDA else "cpu"
REPO = Path(__file__).resolve().parents[2]
POSTS = REPO / "examples" / "posts.csv"
VOCAB = 30_522  # the embedding table of a BERT-sized vocabulary
MAX_LENGTH = 128
NUM_CLASSES = 4
SHAPES = {  # name: (hidden, layers, heads, feed-forward)
    "minilm": (384, 6, 12, 1536),
    "bert-base": (768, 12, 12, 3072),
}
if not CUDA:  # the code paths, compiles included; one tiny shape, so its compiles are cached
    SHAPES = {"minilm-tiny": (32, 2, 2, 64), "bert-base-tiny": (32, 2, 2, 64)}
BATCH = 64 if CUDA else 4
REPEATS, WARMUP = (50, 2) if CUDA else (2, 0)
FP32_TOLERANCE = 1e-3
BF16_FLOOR = 2e-2
LOSS_TOLERANCE = 5e-2
OURS = ["ours patched", "ours patched torch.compile"]
HF = ["HF eager", "HF torch.compile"]


def real_post_batch(posts: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids and mask (B, L) of `posts` posts of examples/posts.csv drawn with `seed`, padded to
    the longest of them, and a label for each."""
    with POSTS.open(encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    tokenizer = Tokenizer.train(texts, vocab_size=8000, min_frequency=1)
    chosen = random.Random(seed).sample(texts, posts)
    batch = tokenizer.encode_batch(chosen, max_length=MAX_LENGTH)
    ids = torch.from_numpy(batch.input_ids).to(DEVICE)
    mask = torch.from_numpy(batch.attention_mask).to(DEVICE).bool()
    labels = torch.randint(0, NUM_CLASSES, (posts,), generator=torch.Generator().manual_seed(seed))
    return ids, mask, labels.to(DEVICE)


class HfLogits(nn.Module):
    """A BertForSequenceClassification called as fbdl_fast's models are: (ids, mask) -> logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask.long()).logits


def hf_model(shape: tuple[int, int, int, int]) -> nn.Module:
    """HF's BertForSequenceClassification with SDPA attention, dropout 0, seed 0."""
    transformers = peers.import_peer("transformers")
    hidden, layers, heads, ffn = shape
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=MAX_LENGTH, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=NUM_CLASSES, layer_norm_eps=1e-12,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).to(DEVICE)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"asked for sdpa attention, got {model.config._attn_implementation}")
    return model


def ours_model(shape: tuple[int, int, int, int], hf: nn.Module | None) -> nn.Module:
    """models/bert.py at `shape`, [CLS] pooling, dropout 0, holding `hf`'s encoder weights when
    given (through the BERT checkpoint loader), else its own seed-0 weights."""
    hidden, layers, heads, ffn = shape
    config = ModelConfig(
        input_dim=hidden, hidden_dim=ffn, num_layers=layers, num_heads=heads, vocab_size=VOCAB,
        num_classes=NUM_CLASSES, max_seq_length=MAX_LENGTH, dropout=0.0, pooling="cls",
        fused=False, seed=0,
    )  # fmt: skip
    model = create_model("bert", config)
    if hf is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "pytorch_model.bin"
            torch.save({k: v.cpu() for k, v in hf.bert.state_dict().items()}, path)
            load_pretrained(model, path)
    return model.to(DEVICE)


def _masked_error(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> float:
    return peers.relative_error(got.float()[mask], want.float()[mask])


def check_encoders(hf: nn.Module, ours: nn.Module, ids, mask) -> dict[str, float]:
    """Relative errors of the encoders' last hidden states on real tokens against HF's in fp32:
    ours in fp32 (the same weights: within FP32_TOLERANCE), HF and ours patched under bf16
    autocast (ours within twice HF's own error, or BF16_FLOOR)."""
    patched = copy.deepcopy(ours)
    patch(patched)
    models = {"hf": hf, "ours": ours, "ours patched": patched}
    for model in models.values():
        model.eval()
    states: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            with torch.autocast(DEVICE, torch.bfloat16, enabled=precision == "bf16"):
                states[f"hf {precision}"] = hf.bert(
                    input_ids=ids, attention_mask=mask.long()
                ).last_hidden_state
                states[f"ours {precision}"] = ours.encode(ids, mask)
                states[f"ours patched {precision}"] = patched.encode(ids, mask)
    truth = states.pop("hf fp32")
    errors = {name: _masked_error(state, truth, mask) for name, state in states.items()}
    assert errors["ours fp32"] <= FP32_TOLERANCE, f"encoders differ in fp32: {errors}"
    bound = max(2 * errors["hf bf16"], BF16_FLOOR)
    late = {k: v for k, v in errors.items() if k.startswith("ours") and "bf16" in k and v > bound}
    assert not late, f"ours in bf16 beyond {bound:.3g} of HF's fp32 encoder: {errors}"
    return errors


def _fp32_loss(model: nn.Module, ids, mask, labels) -> float:
    model.eval()
    with torch.no_grad():
        return nn.functional.cross_entropy(model(ids, mask).float(), labels).item()


@pytest.mark.parametrize("name", list(SHAPES))
def bench_hf_training_step(name: str) -> None:
    shape = SHAPES[name]
    ids, mask, labels = real_post_batch(BATCH)
    try:
        hf, hf_missing = hf_model(shape), None
    except Exception as error:  # ours still runs; every HF variant says why it did not
        hf, hf_missing = None, error
    ours = ours_model(shape, hf)
    encoder_errors = check_encoders(hf, ours, ids, mask) if hf is not None else None
    family_loss = {"ours": _fp32_loss(copy.deepcopy(ours), ids, mask, labels)}
    if hf is not None:
        family_loss["HF"] = _fp32_loss(HfLogits(copy.deepcopy(hf)), ids, mask, labels)

    def step_of(make: Callable[[], nn.Module]) -> Callable[[], Callable[[], float]]:
        return lambda: training_step(make(), ids, mask, labels, amp_dtype=torch.bfloat16)

    def hf_copy() -> nn.Module:
        if hf_missing is not None:
            raise hf_missing
        return HfLogits(copy.deepcopy(hf))

    def patched_copy() -> nn.Module:
        model = copy.deepcopy(ours)
        patch(model)
        return model

    factories = {
        "HF eager": step_of(hf_copy),
        "HF torch.compile": step_of(lambda: peers.compiled(hf_copy())),
        "ours reference": step_of(lambda: copy.deepcopy(ours)),
        "ours patched": step_of(patched_copy),
        "ours patched torch.compile": step_of(lambda: peers.compiled(patched_copy())),
    }

    def first_loss_error(variant: str, loss: Any) -> float:
        want = family_loss["HF" if variant.startswith("HF") else "ours"]
        return abs(loss - want) / max(1.0, abs(want))

    problem = {
        "model": name, "hidden": shape[0], "layers": shape[1], "heads": shape[2],
        "batch": list(ids.shape), "real_tokens": int(mask.sum()), "precision": "bf16-autocast",
        "encoder_errors": encoder_errors,
    }  # fmt: skip
    row = peers.measure_row(
        "training_peers",
        problem,
        factories,
        ours=OURS,
        eager="HF eager",
        peers=HF,
        repeats=REPEATS,
        warmup=WARMUP,
        per_call=ids.shape[0],
        check=first_loss_error,
        ours_tolerance=LOSS_TOLERANCE,
    )
    assert row["ours"] is not None, row["variants"]
