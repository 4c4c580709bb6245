"""Distillation: train a small student on a trained teacher's soft targets (`fbdl-fast distill`).

    fbdl-fast distill --teacher runs/minilm --student cnn --data posts.csv --output runs/cnn-d

The loss of a training post (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"), with s the student's logits, t the teacher's, y the label, T the temperature:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * hard(s, y)

alpha weights the soft (teacher) term, 1 - alpha the hard (label) term; hard is the run's
--loss (cross-entropy by default, with its --class-weights). T^2 keeps the soft term's gradients
on the scale of the hard term's as T changes (they shrink as 1 / T^2). In a batch the soft term
is averaged over every post, the hard term over the posts with a label: `--unlabelled` posts
carry soft targets only. Validation (early stopping, best.pt) uses the hard loss alone, so the
run's val_loss is the student's own cross-entropy on labelled posts, like any run's.

The teacher is any run folder (MiniLM or another model) and reads the posts with its own
tokenizer; the student trains its own, unless it starts from the teacher (training.students: a
MiniLM student made of K of a MiniLM teacher's layers, or a student given the teacher's token
embeddings), which then reads the posts with the teacher's tokenizer. The teacher's logits over
the training posts (and the unlabelled ones) are computed once, before the first epoch, and
cached in the run folder (TEACHER_LOGITS, written atomically) with the SHA-256 of the texts and
of the teacher's checkpoint: --resume reuses them after checking both, instead of running the
teacher again.

With no unlabelled posts, `--augment N` makes a transfer set of N variants of each training
post (training.augment: masking, replacement, n-gram sampling, span shuffling), labelled by the
teacher with soft targets only, as unlabelled posts are. Its texts and logits are cached in
TRANSFER_SET under the SHA-256 of the training texts, the teacher's checkpoint, the settings and
the seed: --resume (or another call on the same folder) reuses them; other settings recompute
them.

The training loop is the train command's: the targets of a training batch are rows (label or
-1, the teacher's logits...) that DistillationLoss reads; the output folder is an ordinary run
that evaluate, predict, export and --resume take as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fbdl_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fbdl_fast.files import sha256_of
from fbdl_fast.training import students
from fbdl_fast.training.augment import AugmentSettings, augment_texts, settings_sha256

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap, Posts
    from fbdl_fast.tokenizer import Tokenizer
    from fbdl_fast.training.loading import Run

TEACHER_LOGITS = "teacher_logits.pt"  # the cache, in the run folder
TRANSFER_SET = "transfer_set.pt"  # --augment's variants and the teacher's logits over them
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5
NO_LABEL = -1  # the label of an --unlabelled post in the packed targets


class DistillationLoss(nn.Module):
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * hard(s, y).

    Training targets are (B, 1 + C) float rows: the label id (NO_LABEL for an unlabelled post),
    then the teacher's C logits. The soft term is the mean over the batch's posts of the
    per-post KL divergence (summed over classes); the hard term is `hard_loss` over the posts
    with a label (0 when the batch has none). Targets of shape (B,) are plain label ids
    (validation, evaluate): the hard loss alone.
    """

    def __init__(self, hard_loss: nn.Module, temperature: float, alpha: float) -> None:
        super().__init__()
        check_temperature(temperature)
        check_alpha(alpha)
        self.hard_loss = hard_loss
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            return self.hard_loss(logits, target)
        labels = target[:, 0].round().long()
        teacher = target[:, 1:].to(logits.dtype)
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        labelled = labels != NO_LABEL
        if bool(labelled.any()):
            hard = self.hard_loss(logits[labelled], labels[labelled])
        else:  # a batch of unlabelled posts: the soft term alone (keeps the graph)
            hard = logits.sum() * 0.0
        return self.alpha * t * t * soft + (1.0 - self.alpha) * hard

    @staticmethod
    def hard_labels(target: torch.Tensor) -> torch.Tensor:
        """The class each target row counts as for the training accuracy: its label, or for an
        unlabelled post the teacher's top class (agreement with the teacher)."""
        if target.dim() == 1:
            return target
        labels = target[:, 0].round().long()
        return torch.where(labels == NO_LABEL, target[:, 1:].argmax(dim=-1), labels)


# Softening temperatures accepted: Hinton et al. use 1 to 20. Past these bounds the loss (scaled
# by T**2) or the logits (divided by T) overflow float32, and training would stop as
# "diverged", blaming the learning rate.
TEMPERATURE_RANGE = (0.01, 100.0)


def check_temperature(value: float) -> None:
    low, high = TEMPERATURE_RANGE
    if not (isinstance(value, (int, float)) and low <= value <= high):
        raise ValueError(
            f"--temperature {value!r} is invalid; accepted: a number in [{low:g}, {high:g}] "
            "(e.g. 2)"
        )


def check_alpha(value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"--alpha {value!r} is invalid; accepted: a number in [0, 1] (the weight of the "
            "teacher's soft targets; 1 - alpha weights the labels)"
        )


def texts_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of the texts in order (each length-prefixed, so no separator can be forged)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass
class Distillation:
    """What `fbdl-fast distill` adds to a train run: the loaded teacher, T, alpha and the
    unlabelled posts' texts."""

    teacher: Run
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    unlabelled_path: Optional[Path] = None
    unlabelled: list[str] = field(default_factory=list)
    teacher_batch_size: Optional[int] = None
    student: Optional[str] = None  # the student's model name, when it may start from the teacher
    student_layers: Optional[int] = None  # student "minilm": the teacher's layers it keeps
    student_embeddings: str = students.DEFAULT_STUDENT_EMBEDDINGS
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    @classmethod
    def load(
        cls,
        teacher: Path,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        alpha: float = DEFAULT_ALPHA,
        checkpoint: Optional[str] = None,
        device: Optional[str] = None,
        unlabelled: Optional[Path] = None,
        text_column: str = "text",
        encoding_errors: str = "strict",
        student: Optional[str] = None,
        student_layers: Optional[int] = None,
        student_embeddings: str = students.DEFAULT_STUDENT_EMBEDDINGS,
        augment: Optional[AugmentSettings] = None,
    ) -> Distillation:
        """Check T and alpha, load the teacher run (RunError / CheckpointError naming its files),
        check that it can start `student` (training.students.check_student) and read the
        unlabelled posts' texts; before any training data is read."""
        from fbdl_fast.data import load_posts
        from fbdl_fast.runs import PROG, RunError
        from fbdl_fast.training.loading import load_run

        check_temperature(temperature)
        check_alpha(alpha)
        if not teacher.is_dir():
            raise RunError(
                f"--teacher {teacher}: the folder does not exist; give a run folder written by "
                f"`{PROG} train` (e.g. runs/minilm)"
            )
        try:
            run = load_run(teacher, checkpoint=checkpoint, device=device, threads=None)
        except (ValueError, CheckpointError) as err:
            # The teacher's other checkpoint, when load_run names one, is --teacher-checkpoint.
            said = str(err).replace("pass --checkpoint ", "pass --teacher-checkpoint ")
            raise type(err)(f"--teacher {teacher}: {said}") from None
        if run.config.multi_label:
            raise RunError(
                f"--teacher {teacher} is a multi-label run; distillation takes a single-label "
                "teacher (softmax targets)"
            )
        augment = augment or AugmentSettings()
        student_embeddings = students.resolve_embeddings(run, student, student_embeddings)
        if student is not None:
            students.check_student(run, student, student_layers, student_embeddings)
        if augment.variants and alpha == 0:
            raise ValueError(
                "--augment with --alpha 0: the variants have soft targets only, which alpha 0 "
                "weights by 0; give --alpha > 0"
            )
        texts: list[str] = []
        if unlabelled is not None:
            if alpha == 0:
                raise ValueError(
                    "--unlabelled with --alpha 0: unlabelled posts have soft targets only, "
                    "which alpha 0 weights by 0; give --alpha > 0"
                )
            texts = load_posts(unlabelled, text_column, None, errors=encoding_errors).texts
        return cls(
            run,
            float(temperature),
            float(alpha),
            unlabelled,
            texts,
            student=student,
            student_layers=student_layers,
            student_embeddings=student_embeddings,
            augment=augment,
        )

    # -- a student that starts from the teacher (training.students) ------------------------------

    @property
    def shares_tokenizer(self) -> bool:
        """Whether the student reads the posts with the teacher's tokenizer."""
        return self.student is not None and students.shares_tokenizer(
            self.student, self.student_embeddings
        )

    def student_config(self, config: ModelConfig) -> ModelConfig:
        """`config` with what the student takes from the teacher (its sizes, or none)."""
        if self.student is None:
            return config
        return students.student_config(
            self.teacher, self.student, config, self.student_layers, self.student_embeddings
        )

    def init_student(self, model: nn.Module, label_map: LabelMap) -> None:
        """Copy into `model` the weights it starts with of the teacher (none by default)."""
        if self.student is not None:
            students.init_student(
                model, self.teacher, self.student, label_map, self.student_embeddings
            )

    def meta(self, label_map: LabelMap) -> dict[str, Any]:
        """config.json's "distillation" section; ValueError when the teacher's labels are not
        the data's (checked before the run folder is created)."""
        ours, theirs = set(map(str, label_map.labels)), set(map(str, self.teacher.label_map.labels))
        if ours != theirs:
            missing, extra = sorted(ours - theirs), sorted(theirs - ours)
            raise ValueError(
                f"--teacher {self.teacher.path} was trained on other labels than the data's: "
                + "; ".join(
                    part
                    for part in (
                        f"the teacher lacks {missing}" if missing else "",
                        f"the data lacks {extra}" if extra else "",
                    )
                    if part
                )
                + f" (teacher: {self.teacher.label_map.labels}); distil with the teacher's "
                "labels, the same set"
            )
        return {
            "teacher": str(self.teacher.path),
            "teacher_model": self.teacher.meta.get("model"),
            "teacher_checkpoint": self.teacher.checkpoint.name,
            "teacher_sha256": sha256_of(self.teacher.checkpoint),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "unlabelled": None if self.unlabelled_path is None else str(self.unlabelled_path),
            "unlabelled_sha256": (
                None if self.unlabelled_path is None else sha256_of(self.unlabelled_path)
            ),
            "unlabelled_posts": len(self.unlabelled),
            # Only when asked for: runs made before these options keep resuming.
            **({"student_layers": self._layers()} if self.student == "minilm" else {}),
            **(
                {"student_embeddings": self.student_embeddings}
                if self.student_embeddings != students.DEFAULT_STUDENT_EMBEDDINGS
                else {}
            ),
            **({"augment": self.augment.to_dict()} if self.augment.variants else {}),
        }

    def _layers(self) -> int:
        return (
            students.DEFAULT_STUDENT_LAYERS if self.student_layers is None else self.student_layers
        )

    def resume_mismatch(self, stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
        """The distillation settings that differ between the run's config.json and now (the
        paths may move; their contents may not)."""
        saved = stored.get("distillation")
        if not isinstance(saved, dict):
            return ["the run was not made by distill"]
        return [
            f"distillation.{k} ({saved.get(k)!r} in the run, {v!r} now)"
            for k, v in current.items()
            if k not in ("teacher", "unlabelled") and saved.get(k) != v
        ]

    def teacher_logits(
        self, run_dir: Path, texts: Sequence[str], label_map: LabelMap, say: Any = None
    ) -> torch.Tensor:
        """The teacher's raw logits (N, C) over `texts`, columns in `label_map`'s order: read
        from run_dir/TEACHER_LOGITS when it holds these texts and this teacher, else computed
        (teacher's tokenizer, batch size and max length) and written there atomically."""
        path = run_dir / TEACHER_LOGITS
        digest, teacher_sha = texts_sha256(texts), sha256_of(self.teacher.checkpoint)
        if path.is_file():
            state = load_checkpoint(path)
            if state.get("texts_sha256") != digest or state.get("teacher_sha256") != teacher_sha:
                raise ValueError(
                    f"{path} holds the logits of other posts or another teacher than this "
                    "command's (SHA-256 of the texts or of the teacher's checkpoint differs); "
                    "distil into a new run, or delete the file to recompute it"
                )
            logits = state["logits"]
            if not isinstance(logits, torch.Tensor) or logits.shape != (
                len(texts),
                len(label_map),
            ):
                raise CheckpointError(f"{path} is damaged (logits of the wrong shape)")
            return logits
        if say is not None:
            say(f"teacher {self.teacher.path.name}: logits of {len(texts)} posts ...")
        logits = compute_logits(self.teacher, texts, self.teacher_batch_size)
        # The teacher's class order -> the student's.
        columns = [self.teacher.label_map.encode(label) for label in label_map.labels]
        logits = logits[:, columns].contiguous()
        save_checkpoint(
            {
                "texts_sha256": digest,
                "teacher_sha256": teacher_sha,
                "teacher": str(self.teacher.path),
                "labels": [str(label) for label in label_map.labels],
                "logits": logits,
            },
            path,
        )
        return logits

    def transfer_set(
        self,
        run_dir: Path,
        texts: Sequence[str],
        label_map: LabelMap,
        seed: int,
        say: Any = None,
    ) -> tuple[list[str], torch.Tensor]:
        """The variants of `texts` (self.augment, `seed`) and the teacher's logits over them,
        columns in `label_map`'s order: read from run_dir/TRANSFER_SET when its key (the
        texts', the teacher's, the settings and the seed) is this call's, else made, labelled
        by the teacher and written there atomically (replacing a set made otherwise)."""
        path = run_dir / TRANSFER_SET
        teacher_sha = sha256_of(self.teacher.checkpoint)
        key = settings_sha256(texts_sha256(texts), teacher_sha, self.augment, seed)
        if path.is_file():
            state = load_checkpoint(path)
            if state.get("key") == key:
                variants, logits = state.get("texts"), state.get("logits")
                if (
                    not isinstance(variants, list)
                    or not isinstance(logits, torch.Tensor)
                    or logits.shape != (len(variants), len(label_map))
                    or len(variants) != len(texts) * self.augment.variants
                ):
                    raise CheckpointError(f"{path} is damaged (texts and logits do not match)")
                return variants, logits
            if say is not None:
                say(f"{path.name} was made with other settings or posts: making it again")
        variants = augment_texts(texts, self.augment, seed)
        if say is not None:
            say(f"teacher {self.teacher.path.name}: logits of {len(variants)} augmented posts ...")
        logits = compute_logits(self.teacher, variants, self.teacher_batch_size)
        columns = [self.teacher.label_map.encode(label) for label in label_map.labels]
        logits = logits[:, columns].contiguous()
        save_checkpoint(
            {
                "key": key,
                "settings": self.augment.to_dict(),
                "seed": int(seed),
                "texts_sha256": texts_sha256(texts),
                "teacher_sha256": teacher_sha,
                "texts": variants,
                "logits": logits,
            },
            path,
        )
        return variants, logits

    def loaders(
        self,
        run_dir: Path,
        train: Posts,
        val: Posts,
        tokenizer: Tokenizer,
        label_map: LabelMap,
        config: ModelConfig,
        say: Any = None,
    ) -> tuple[DataLoader, DataLoader, DistillationLoss]:
        """The train command's loaders, the training one carrying (label, teacher logits) rows
        for the training posts and the unlabelled ones, and the loss that reads them."""
        from fbdl_fast.data import PostsDataset, make_loader
        from fbdl_fast.training import losses

        texts = [*train.texts, *self.unlabelled]
        logits = self.teacher_logits(run_dir, texts, label_map, say)
        ids = [*label_map.encode_all(train), *[NO_LABEL] * len(self.unlabelled)]
        if self.augment.variants:  # the transfer set: soft targets only, like unlabelled posts
            variants, variant_logits = self.transfer_set(
                run_dir, train.texts, label_map, config.seed, say
            )
            texts += variants
            logits = torch.cat([logits, variant_logits])
            ids += [NO_LABEL] * len(variants)
        targets = np.concatenate(
            [np.asarray(ids, dtype=np.float32)[:, None], logits.numpy().astype(np.float32)], axis=1
        )
        train_loader, val_loader = (
            make_loader(
                PostsDataset.from_texts(tokenizer, part, labels, config.max_seq_length),
                config.batch_size,
                shuffle=shuffle,
                seed=config.seed,
                pad_token_id=config.pad_token_id,
            )
            for part, labels, shuffle in (
                (texts, targets, True),
                (val.texts, label_map.encode_all(val), False),
            )
        )
        loss = DistillationLoss(losses.create_loss(config), self.temperature, self.alpha)
        return train_loader, val_loader, loss


def compute_logits(
    run: Run, texts: Sequence[str], batch_size: Optional[int] = None
) -> torch.Tensor:
    """A run's raw logits (N, C) float32 over `texts`, in their order (no calibration)."""
    from fbdl_fast.data import PostsDataset, loader_order, make_loader

    dataset = PostsDataset.from_texts(run.tokenizer, texts, None, run.config.max_seq_length)
    loader = make_loader(
        dataset,
        batch_size or run.config.batch_size,
        shuffle=False,
        pad_token_id=run.config.pad_token_id,
    )
    logits, _, _ = run.trainer.outputs(loader)
    ordered = torch.empty_like(logits)
    ordered[loader_order(loader)] = logits  # the loader sorts by length
    return ordered


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TEMPERATURE",
    "TEACHER_LOGITS",
    "TRANSFER_SET",
    "Distillation",
    "DistillationLoss",
    "compute_logits",
    "texts_sha256",
]
