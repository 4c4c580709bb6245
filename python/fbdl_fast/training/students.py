"""Students that start from the teacher's weights (`fbdl-fast distill`).

A MiniLM student (`--student minilm --student-layers K`) is a BERT encoder of K blocks taken from
a BERT-family teacher (a `train --model minilm` run): the teacher's embeddings, K of its blocks
evenly spaced and ending with its last (`spread_layers`: blocks 3 and 6 of 6 for K=2; 2, 4, 6 for
K=3; 6 for K=1), and its classification head, reading the posts with the teacher's tokenizer.
Keeping the last block keeps the input the head was trained on closest to what it now sees;
taking one block of each of K equal groups is the "skip" choice of Sun et al. 2019 (Patient
Knowledge Distillation) and DistilBERT's (Sanh et al. 2019: one block of every two). The
student then trains on the teacher's soft targets like any student, and its run folder is an
ordinary minilm run (its config.json's num_layers is K).

A CNN, LSTM or Transformer student may start from the teacher's token embeddings
(`--student-embeddings teacher`): it reads the posts with the teacher's tokenizer (the same
WordPiece vocabulary) and its input_dim is the teacher's width (384 for MiniLM), so that the
teacher's embedding table is copied as it is (no projection layer: the student's first layer
reads the 384-wide vectors). "own" trains the student's own tokenizer and draws its embeddings,
as before. "auto" (the CLI's default) is "teacher" for a BERT-family teacher and "own" for any
other: on a seeded sample of the Debian task (benches/studies/distill_students.py, 200 posts a
section, --augment 2) a CNN distilled from MiniLM reached a test macro-F1 of 0.684 with the
teacher's embeddings against 0.521 with its own (the teacher 0.650, the CNN from scratch 0.488).
The library's default stays "own".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional, cast

import torch
from torch import nn

from fbdl_fast.config import ModelConfig

if TYPE_CHECKING:
    from fbdl_fast.data import LabelMap
    from fbdl_fast.models.bert import BertClassifier
    from fbdl_fast.training.loading import Run

MINILM_STUDENT = "minilm"
DEFAULT_STUDENT_LAYERS = 2
STUDENT_EMBEDDINGS = ("own", "teacher")
DEFAULT_STUDENT_EMBEDDINGS = "own"
AUTO_EMBEDDINGS = "auto"  # "teacher" for a BERT-family teacher, else "own"
# ModelConfig fields a MiniLM student takes from its teacher (its blocks must fit them).
TEACHER_FIELDS = (
    "input_dim",
    "hidden_dim",
    "num_heads",
    "vocab_size",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "pooling",
)


def spread_layers(total: int, keep: int) -> list[int]:
    """`keep` of `total` block indices (0-based), one from each of `keep` near-equal groups, the
    last of its group: spread_layers(6, 2) == [2, 5], spread_layers(6, 3) == [1, 3, 5]."""
    if not (1 <= keep <= total):
        raise ValueError(
            f"--student-layers {keep!r} is invalid; accepted: an integer in [1, {total}] (the "
            f"teacher has {total} layers)"
        )
    return [((i + 1) * total + keep // 2) // keep - 1 for i in range(keep)]


def teacher_encoder(teacher: Run) -> Optional[BertClassifier]:
    """The teacher's BertClassifier, or None when it is not a BERT-family run."""
    from fbdl_fast.models.bert import BertClassifier

    model = teacher.model
    return model if isinstance(model, BertClassifier) else None


def check_student(teacher: Run, student: str, layers: Optional[int], embeddings: str) -> None:
    """ValueError, in one line naming the option, for a student this teacher cannot start."""
    name = teacher.meta.get("model")
    if embeddings not in STUDENT_EMBEDDINGS:
        raise ValueError(
            f"--student-embeddings {embeddings!r} is invalid; accepted: "
            f"{', '.join(STUDENT_EMBEDDINGS)}"
        )
    if student == MINILM_STUDENT:
        encoder = teacher_encoder(teacher)
        if encoder is None:
            raise ValueError(
                f"--student minilm takes its layers from a BERT-family teacher (a `train "
                f"--model minilm` run); --teacher {teacher.path} is a {name} run: give a minilm "
                "teacher, or a cnn, lstm or transformer student"
            )
        spread_layers(len(encoder.blocks), DEFAULT_STUDENT_LAYERS if layers is None else layers)
        return
    if layers is not None:
        raise ValueError(
            f"--student-layers {layers} is for --student minilm (the teacher's layers); "
            f"--student {student} has its own --num-layers"
        )
    if embeddings == "teacher" and not isinstance(
        getattr(teacher.model, "embedding", None), nn.Embedding
    ):
        raise ValueError(
            f"--student-embeddings teacher: --teacher {teacher.path} ({name}) has no token "
            "embedding table to copy; use --student-embeddings own"
        )


def resolve_embeddings(teacher: Run, student: Optional[str], embeddings: str) -> str:
    """`embeddings` as asked, or for "auto": "teacher" when a cnn, lstm or transformer student
    learns from a BERT-family teacher (its WordPiece embeddings), "own" otherwise."""
    if embeddings != AUTO_EMBEDDINGS:
        return embeddings
    bert_teacher = teacher_encoder(teacher) is not None
    return "teacher" if bert_teacher and student not in (None, MINILM_STUDENT) else "own"


def shares_tokenizer(student: str, embeddings: str) -> bool:
    """Whether the student reads the posts with the teacher's tokenizer."""
    return student == MINILM_STUDENT or embeddings == "teacher"


def student_config(
    teacher: Run, student: str, config: ModelConfig, layers: Optional[int], embeddings: str
) -> ModelConfig:
    """`config` (filled from the data) with what the student takes from the teacher: a MiniLM
    student its sizes (TEACHER_FIELDS), K layers, and at most the teacher's max_seq_length (its
    position table has no more rows); a student with the teacher's embeddings their width."""
    tc = teacher.config
    if student == MINILM_STUDENT:
        keep = DEFAULT_STUDENT_LAYERS if layers is None else layers
        fields = {name: getattr(tc, name) for name in TEACHER_FIELDS}
        chosen = spread_layers(tc.num_layers, keep)
        return dataclasses.replace(
            config,
            **fields,
            num_layers=keep,
            max_seq_length=min(config.max_seq_length, tc.max_seq_length),
            extra={**config.extra, "teacher_layers": chosen},
        )
    if embeddings == "teacher":
        embedding = cast(nn.Embedding, teacher.model.embedding)  # checked by check_student
        return dataclasses.replace(config, input_dim=int(embedding.weight.shape[1]))
    return config


def init_student(
    model: nn.Module,
    teacher: Run,
    student: str,
    label_map: LabelMap,
    embeddings: str,
) -> None:
    """Copy into `model` (built from student_config) what it starts with of the teacher: a
    MiniLM student its embeddings, chosen blocks and head (rows in label_map's order); another
    student the token embeddings when `embeddings` is "teacher". Nothing otherwise."""
    from fbdl_fast.models.bert import layers_state_dict

    with torch.no_grad():
        if student == MINILM_STUDENT:
            encoder = teacher_encoder(teacher)
            assert encoder is not None, "check_student refuses a teacher that is not BERT"
            chosen = cast(ModelConfig, model.config).extra["teacher_layers"]
            state = {k: v.cpu() for k, v in layers_state_dict(encoder, chosen).items()}
            rows = [teacher.label_map.encode(label) for label in label_map.labels]
            state["head.weight"] = state["head.weight"][rows].contiguous()
            state["head.bias"] = state["head.bias"][rows].contiguous()
            model.load_state_dict(state, strict=True)
        elif embeddings == "teacher":
            table = cast(nn.Embedding, teacher.model.embedding).weight  # checked by check_student
            cast(nn.Embedding, model.embedding).weight.copy_(table.detach().cpu())


__all__ = [
    "AUTO_EMBEDDINGS",
    "DEFAULT_STUDENT_EMBEDDINGS",
    "DEFAULT_STUDENT_LAYERS",
    "MINILM_STUDENT",
    "STUDENT_EMBEDDINGS",
    "check_student",
    "init_student",
    "resolve_embeddings",
    "shares_tokenizer",
    "spread_layers",
    "student_config",
    "teacher_encoder",
]
