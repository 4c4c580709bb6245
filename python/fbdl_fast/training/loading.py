"""A trained run folder as a Python object that predicts and evaluates.

    import fbdl_fast

    run = fbdl_fast.load_run("runs/first")                  # best.pt, else last.pt
    for p in run.predict(["win a FREE phone!!! https://bit.ly/x", "so happy today"]):
        print(p.label, round(p.probability, 3))
    print(run.evaluate("test.csv").macro_f1)

`load_run` reads the folder through fbdl_fast.runs (config.json, tokenizer.json and label_map.json,
checked against the weights before any model is built) and takes the weights from best.pt, last.pt
or a checkpoint file (torch, on `device`), from model.int8.pt (fbdl_fast.serving.int8) or from
model.onnx or model.int8.onnx in onnxruntime (fbdl_fast.serving.onnx), all on the CPU. Whatever the
weights, a Run predicts and evaluates the same way: its Trainer runs the posts in length-bucketed,
padded batches; single-label probabilities are softmax(logits / T), T the checkpoint's calibration
temperature (train --calibrate; 1 without), multi-label ones sigmoid(logits) per class, whose label
sets take the per-class thresholds the weights carry (train --tune-thresholds; 0.5 where none were
tuned).

`fbdl-fast predict` and `fbdl-fast evaluate` are this module, plus reading the input file and
writing rows. Importing it loads no torch: that happens in `load_run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from fbdl_fast.runs import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    RunFiles,
    check_unit,
    checkpoint_path,
    read_run_files,
)
from fbdl_fast.training.devices import check_device
from fbdl_fast.training.predictor import (
    DEFAULT_THRESHOLD,
    MAX_BATCH_SIZE,
    PREDICT_CHUNK,
    PathLike,
    Predictor,
    check_positive,
)
from fbdl_fast.training.results import MultiLabelEvaluation, Prediction, RunEvaluation

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from fbdl_fast.data import Posts
    from fbdl_fast.serving.provenance import ServedModel
    from fbdl_fast.training.trainer import Trainer

# torch's intra-op CPU threads while a Run predicts or evaluates (see load_run's `threads`).
# One: on a shared machine more threads wait on each other. Measured on this project's 2-core
# machine with the README's tour (benches/studies/tour_vs_cli.py, docs/library.md): torch's
# default of 2 threads took 1.7x as long as 1 with another process busy, 13% less when idle.
DEFAULT_THREADS = 1
# More threads than any machine has cores; torch takes a 32-bit count and fails past it.
MAX_THREADS = 4096
SERVED_FORMATS = ("int8", "onnx", "onnx-int8")  # checkpoint= values that read an export


# ====================
# Run
# ====================


@dataclass(repr=False)
class Run(RunFiles, Predictor):
    """A trained run folder, loaded (`load_run`): its config, tokenizer, label map and a model
    that predicts (`predict`, `predict_iter`: training.predictor) and evaluates (`evaluate`).

        run = load_run("runs/first", checkpoint="int8")
        [p.label for p in run.predict(["free prize!!!", "lovely day"])]   # ['spam', 'positive']

    `trainer` runs the batches (fbdl_fast.training.trainer.Trainer, its optimizer never built);
    `checkpoint` is the file the weights came from; `threads` is torch's intra-op thread count
    during each call (None: torch's setting as it is)."""

    trainer: Trainer
    checkpoint: Path
    threads: Optional[int] = DEFAULT_THREADS
    # SHA-256 of the bytes the weights were read from (export stamps it); None: not hashed
    checkpoint_sha256: Optional[str] = None

    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, model={self.meta.get('model')!r}, "
            f"checkpoint={self.checkpoint.name!r}, labels={self.label_map.labels!r})"
        )

    @property
    def model(self) -> nn.Module:
        """The network: forward(input_ids, attention_mask) -> logits."""
        return self.trainer.model

    @property
    def temperature(self) -> float:
        """The calibration temperature single-label probabilities are divided by (1: none)."""
        return self.trainer.temperature

    @property
    def thresholds(self) -> Optional[list[float]]:
        """Multi-label runs: the tuned per-class thresholds, None where none were tuned."""
        return self.trainer.thresholds

    def loader(
        self,
        texts: Sequence[str],
        labels: Optional[Any] = None,
        batch_size: Optional[int] = None,
    ) -> DataLoader:
        """Batches of `texts` as predict and evaluate build them: tokenised with the run's
        tokenizer, truncated to its max length, bucketed by length (fbdl_fast.data.loader_order
        gives the input position of each row), padded; `labels` (class ids, or multi-hot rows)
        ride along. batch_size: default the run's."""
        from fbdl_fast.data import PostsDataset, make_loader

        size = (
            self.config.batch_size
            if batch_size is None
            else check_positive("batch_size", batch_size, MAX_BATCH_SIZE)
        )
        dataset = PostsDataset.from_texts(
            self.tokenizer, texts, labels, max_length=self.config.max_seq_length
        )
        return make_loader(dataset, size, shuffle=False, pad_token_id=self.config.pad_token_id)

    def _probabilities(self, texts: Sequence[str], batch_size: Optional[int]) -> torch.Tensor:
        """class_probabilities as a (len(texts), classes) tensor; texts not empty."""
        import torch

        from fbdl_fast.data import loader_order

        loader = self.loader(texts, None, batch_size)
        with self._torch_threads():
            _, probs = self.trainer.predict(loader)
        ordered = torch.empty_like(probs)
        ordered[loader_order(loader)] = probs  # the loader sorts by length; restore input order
        return ordered

    def _evaluate_posts(
        self, posts: Posts, source: str, batch_size: Optional[int], progress_every: Optional[float]
    ) -> Union[RunEvaluation, MultiLabelEvaluation]:
        """evaluate's figures of the run on `posts` (named `source`)."""
        if self.config.multi_label:
            return self._evaluate_multi_label(posts, source, batch_size, progress_every)
        from fbdl_fast.reports.evaluation import evaluate_logits

        labels = self.label_map.encode_all(posts)  # an unknown label: error naming its line
        loader = self.loader(posts.texts, labels, batch_size)
        with self._torch_threads(), self._progress(progress_every):
            logits, ids, _ = self.trainer.outputs(loader)
        assert ids is not None
        details = evaluate_logits(logits, ids, self.names, self.temperature)
        return RunEvaluation.of(self.path, source, self.checkpoint.name, details)

    def _evaluate_multi_label(
        self,
        posts: Posts,
        source: str,
        batch_size: Optional[int],
        progress_every: Optional[float],
    ) -> MultiLabelEvaluation:
        from fbdl_fast.reports.multilabel_report import multilabel_details
        from fbdl_fast.training.multilabel import multilabel_counts, multilabel_metrics

        targets = self.label_map.multi_hot(posts)  # an unknown label: error naming its line
        loader = self.loader(posts.texts, targets, batch_size)
        with self._torch_threads(), self._progress(progress_every):
            logits, labels, loss = self.trainer.outputs(loader)  # what trainer.evaluate sums
        assert labels is not None
        thresholds = self.thresholds or [DEFAULT_THRESHOLD] * len(self.label_map)
        result = multilabel_metrics(multilabel_counts(logits.sigmoid(), labels, thresholds))
        figures = {"loss": loss, "subset_accuracy": result["accuracy"]}
        figures |= {k: result[k] for k in ("micro_f1", "macro_f1", "hamming_loss")}
        tuned = self.thresholds is not None
        return MultiLabelEvaluation(
            run=self.path,
            data=source,
            checkpoint=self.checkpoint.name,
            num_samples=len(labels),
            **figures,
            thresholds=dict(zip(self.names, thresholds)),
            details=multilabel_details(logits, labels, self.names, thresholds, figures, tuned),
        )

    @contextlib.contextmanager
    def _torch_threads(self) -> Iterator[None]:
        """torch's intra-op threads at self.threads for the block, then as they were."""
        if self.threads is None:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    @contextlib.contextmanager
    def _progress(self, every: Optional[float]) -> Iterator[None]:
        """The trainer's progress lines every `every` seconds for the block, then as before."""
        before = self.trainer.log_every
        self.trainer.log_every = every
        try:
            yield
        finally:
            self.trainer.log_every = before


# ====================
# load_run
# ====================


def load_run(
    path: PathLike,
    *,
    checkpoint: Optional[PathLike] = None,
    device: Optional[str] = None,
    threads: Optional[int] = DEFAULT_THREADS,
) -> Run:
    """Load the run folder `path` (written by `fbdl-fast train` or fbdl_fast.train) to predict
    and evaluate.

        run = fbdl_fast.load_run("runs/first", checkpoint="onnx")
        run.predict(["win a FREE phone!!!"])[0].label         # 'spam'

    checkpoint: "best" or "last" (best.pt / last.pt), the path of a checkpoint file, None
        (best, else last), "int8" (the run's model.int8.pt, `fbdl-fast export --format int8`),
        "onnx" (its model.onnx in onnxruntime, `export --format onnx`; its torch weights are
        never loaded) or "onnx-int8" (model.int8.onnx, `export --format onnx-int8`); these
        three on the CPU only.
    device: where a torch checkpoint runs: "cpu", "cuda", "cuda:1", "mps"; None: CUDA when
        available, else the CPU.
    threads: torch's intra-op CPU threads while each predict/evaluate call runs, set at its
        start and restored at its end (also when it fails); None leaves torch's setting alone.
        For ONNX files, the onnxruntime session's intra-op threads (inter-op: 1). The default, 1, is
        the fastest measured for these model sizes: the batches are built in this process and
        each matrix product is small, so more threads only split it and, on a busy machine,
        wait on each other. On this project's 2-core machine the README's tour (train a CNN,
        then predict) took 1.7x as long with torch's default of 2 threads as with 1 while
        another process kept a core busy, and 13% less when nothing else ran
        (docs/library.md). More can help a large model on a many-core machine with nothing else
        running.

    The folder is checked as one unit before any model is built: config.json, label_map.json
    and tokenizer.json must agree with what the weights were trained with (RunError, a
    ValueError, naming the file); a damaged checkpoint is a CheckpointError naming it; an
    int8/onnx file made from another version of its checkpoint is refused with "export it
    again"."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path is a {type(path).__name__}; load_run takes a run folder's path")
    folder = Path(path)
    if threads is not None:
        check_positive("threads", threads, MAX_THREADS)
    which = os.fspath(checkpoint) if checkpoint is not None else None
    if which in SERVED_FORMATS:
        if device is not None and str(device) != "cpu":
            raise ValueError(
                f"checkpoint={which!r} runs on the CPU only, not device={device!r}; accepted: "
                "device='cpu' or None"
            )
        return _served_run(folder, which, threads)
    check_device(device)
    return _checkpoint_run(folder, which, device, threads)


def _checkpoint_run(
    folder: Path, which: Optional[str], device: Optional[str], threads: Optional[int]
) -> Run:
    """The run with the weights of a torch checkpoint (best, last, a path or None)."""
    from fbdl_fast.checkpoint import CheckpointError, read_checkpoint_using
    from fbdl_fast.manifest import IntegrityError
    from fbdl_fast.models import architecture, create_model
    from fbdl_fast.training.trainer import Trainer

    files = read_run_files(folder)
    chosen = checkpoint_path(folder, which)

    def build(state: dict[str, Any]) -> Trainer:
        """The model with the checkpoint's weights: built while the checkpoint is hashed."""
        check_unit(folder, chosen, state, files.config, files.tokenizer, files.label_map)
        # "minilm" runs hold a "bert" whose config has the checkpoint's sizes.
        model = create_model(architecture(files.model_name), files.config)
        trainer = Trainer(
            model, files.config, device=device, label_map=files.label_map, progress=False
        )
        trainer.load_state(state, chosen, model_only=True)
        return trainer

    try:
        _, digest, trainer = read_checkpoint_using(chosen, build, map_location="cpu")
    except (CheckpointError, IntegrityError) as err:
        other = LAST_CHECKPOINT if chosen.name == BEST_CHECKPOINT else BEST_CHECKPOINT
        if chosen.parent == folder and (folder / other).is_file():
            raise type(err)(
                f"{err}; this run also has {other}: pass --checkpoint {other.removesuffix('.pt')}"
            ) from None
        raise
    run = _run(files, trainer, chosen, threads)
    run.checkpoint_sha256 = digest
    return run


def _served_run(folder: Path, fmt: str, threads: Optional[int]) -> Run:
    """The run with the model of its model.int8.pt, model.onnx or model.int8.onnx, on the CPU."""
    from fbdl_fast.training.trainer import Trainer

    files = read_run_files(folder)
    served: ServedModel
    if fmt == "int8":
        from fbdl_fast.serving.int8 import read_int8

        served = read_int8(files)
    else:
        from fbdl_fast.serving.onnx import read_onnx

        served = read_onnx(files, threads=threads, fmt=fmt)
    # Served weights are never trained: no EMA copy of them (an onnxruntime session cannot even
    # be copied). The run's own config is kept as it is.
    config = dataclasses.replace(files.config, ema_decay=None)
    trainer = Trainer(served.model, config, device="cpu", label_map=files.label_map, progress=False)
    trainer.temperature = served.temperature
    trainer.thresholds = served.thresholds
    return _run(files, trainer, served.path, threads)


def _run(files: RunFiles, trainer: Trainer, checkpoint: Path, threads: Optional[int]) -> Run:
    return Run(
        files.path,
        files.meta,
        files.config,
        files.tokenizer,
        files.label_map,
        trainer,
        checkpoint,
        threads,
    )


__all__ = [
    "DEFAULT_THREADS",
    "PREDICT_CHUNK",
    "MultiLabelEvaluation",
    "Prediction",
    "Run",
    "RunEvaluation",
    "load_run",
]
