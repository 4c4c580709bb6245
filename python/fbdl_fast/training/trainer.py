"""Trainer: the training loop of the reference models, with everything a long run needs.

    trainer = Trainer(model, config, run_dir="runs/demo")
    history = trainer.fit(train_loader, val_loader)          # History: per-epoch metrics
    train_losses, val_losses, train_accs, val_accs = trainer.train(train_loader, val_loader)

One epoch: train every batch (autocast, backward, unscale + clip, optimizer step, per-batch
scheduler), evaluate on the validation loader (loss, accuracy, macro-F1), step epoch schedulers
(ReduceLROnPlateau on the validation loss), track early stopping on config.monitor (the
validation loss or macro-F1), write best.pt / last.pt and one line of metrics.jsonl in run_dir.

Mixed precision ("where it helps"): on CUDA, fp16 autocast with a GradScaler (or bf16 without
one when config.amp_dtype="bfloat16"). On a CPU autocast runs only when asked explicitly with
config.amp_dtype="bfloat16", with a warning when the CPU has no native bf16 instructions (there it
made a small Transformer's step ~23x slower than fp32); use_mixed_precision=True with
amp_dtype="auto" on a CPU trains in fp32.

Resuming continues exactly: a checkpoint holds the model, optimizer, scheduler, scaler, every RNG
state, the epoch, the early-stopping state and the history, and the trainer calls
`set_epoch(epoch)` on the loader's sampler / batch sampler when it has one, so data order comes
from the epoch number and not from leftover RNG state. Epochs are counted from 1 in histories, logs
and checkpoints (`epoch` = epochs completed); set_epoch receives the 0-based index. Resuming
trims metrics.jsonl back to the checkpoint's epochs, so a run killed at any point and resumed
from last.pt ends with the same files as an uninterrupted one.

Gradient accumulation (accumulate_steps=N): N loader batches make one optimizer step. Each
micro-batch's mean loss is weighted by its share of the group's samples, so a group equals one
batch N times larger (also the shorter last group of an epoch) for losses that average over
samples (cross-entropy without class weights, focal); schedulers count optimizer steps.

Distributed (torch.distributed initialised, e.g. by fbdl_fast.training.distributed.init_from_env
under torchrun): the model is wrapped in DistributedDataParallel; the loaders must give each rank
its own shard (data.BucketBatchSampler's num_replicas/rank). Losses are weighted by each rank's
share of the global batch, so R ranks with batch B step exactly as one process with batch R*B;
epoch metrics are sums and counts reduced over ranks (every rank gets the same numbers, hence the
same early-stopping and plateau decisions); only rank 0 writes checkpoints and the metrics log.

Non-finite losses: a step whose loss is NaN or infinite (on any rank) is skipped (no optimizer or
scheduler step) and counted (History.skipped_steps, "skipped_steps" in metrics.jsonl);
max_nonfinite_steps in a row stop training with NonFiniteLossError before any checkpoint of
that epoch is written, so best.pt / last.pt keep the last good weights.

EMA of the weights (config.ema_decay = d): after every optimizer step the average moves to
ema = d * ema + (1 - d) * weights (torch.optim.swa_utils.AveragedModel with
get_ema_multi_avg_fn; buffers such as BatchNorm statistics are copied, not averaged; the first
step copies the weights). Validation, early stopping, the plateau scheduler, evaluate() and
predict() use the average; best.pt holds it as its "model" ("weights": "ema"); last.pt holds the
trained weights and the average ("ema"), so a resumed run continues both exactly. Under DDP
every rank updates its own copy from the same weights, so the copies stay equal.

torch.compile (compile=True, or a dict of torch.compile options) is opt-in: a compiler failure at
the first step becomes a CompileError that says what failed and to train without compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fbdl_fast import metrics
from fbdl_fast.checkpoint import (
    CheckpointError,
    load_checkpoint,
    require_keys,
    rng_state,
    save_checkpoint,
    set_rng_state,
    temperature_of,
)
from fbdl_fast.config import ModelConfig
from fbdl_fast.files import append_line, write_atomic
from fbdl_fast.runs import BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_LOG
from fbdl_fast.training import distributed, finite, losses, optim

if TYPE_CHECKING:
    from fbdl_fast.models.ngram import NgramClassifier

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class History:
    """Per-epoch metrics of a run, index i = epoch i + 1. `train()` returns its first four lists."""

    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_accs: list[float] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)
    val_f1s: list[float] = field(default_factory=list)  # validation macro-F1
    learning_rates: list[float] = field(default_factory=list)  # LR at the epoch's first batch
    epoch_times: list[float] = field(default_factory=list)  # seconds, training + validation
    skipped_steps: list[int] = field(default_factory=list)  # steps skipped: non-finite loss
    # 1-based epoch best.pt holds: the lowest validation loss, or with config.monitor "val_f1"
    # the highest validation macro-F1 (the first such epoch); its loss and macro-F1.
    best_epoch: Optional[int] = None
    best_val_loss: float = math.inf
    best_val_f1: float = -math.inf
    stopped_early: bool = False
    monitor: str = "val_loss"  # what chose best_epoch (config.monitor): "val_loss" or "val_f1"

    @property
    def best_rule(self) -> str:
        """How best_epoch was chosen, for reports: "lowest validation loss" or "highest ..."."""
        if self.monitor == "val_f1":
            return "highest validation macro-F1"
        return "lowest validation loss"

    @property
    def epochs(self) -> int:
        return len(self.train_losses)

    def as_tuple(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """(train_losses, val_losses, train_accs, val_accs), the product design's return value."""
        return self.train_losses, self.val_losses, self.train_accs, self.val_accs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> History:
        known = {f.name for f in dataclasses.fields(cls)}
        history = cls(**{k: v for k, v in values.items() if k in known})
        if "skipped_steps" not in values:  # written before steps were skipped: none were
            history.skipped_steps = [0] * len(history.train_losses)
        return history


class NonFiniteLossError(FloatingPointError):
    """Training stopped: too many optimizer steps in a row had a NaN or infinite loss."""


class CompileError(RuntimeError):
    """torch.compile could not compile the model on this machine."""


def cpu_has_native_bf16() -> bool:
    """True when this CPU reports bf16 arithmetic instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False  # cannot tell (not Linux): the caller warns, which is the safe side
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _amp_plan(config: ModelConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for this config on this device, or None for fp32 training."""
    if not config.use_mixed_precision:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
    if device.type == "cpu" and config.amp_dtype == "bfloat16":
        if not cpu_has_native_bf16():
            warnings.warn(
                "config.amp_dtype='bfloat16' on a CPU without native bf16 instructions "
                "(no AVX512-BF16/AMX): bf16 autocast is emulated and can be many times slower "
                "than fp32 (a small Transformer's step: ~23x). Set amp_dtype='auto' to train "
                "in fp32 on this CPU.",
                UserWarning,
                stacklevel=3,
            )
        return torch.bfloat16
    if device.type == "cpu" and config.amp_dtype == "float16":
        raise ValueError(
            "ModelConfig.amp_dtype='float16' needs a CUDA device (GradScaler); "
            "on a CPU use amp_dtype='bfloat16', 'auto' (fp32) or "
            "use_mixed_precision=False"
        )
    # "auto" on a CPU (or any other device): fp32, as the design's "where it helps" asks.
    return None


def _is_compile_failure(exc: BaseException) -> bool:
    """True for errors raised by torch.compile's machinery (dynamo, inductor, the C++ build)."""
    module = type(exc).__module__
    if module.startswith(("torch._dynamo", "torch._inductor")):
        return True
    import subprocess

    return isinstance(exc, subprocess.CalledProcessError)


def _compile_cause(exc: BaseException) -> str:
    """The innermost error behind a compile failure, in one line (with a compiler's output)."""
    root = exc
    while True:
        inner = getattr(root, "inner_exception", None) or root.__cause__
        if not isinstance(inner, BaseException) or inner is root:
            break
        root = inner
    text = " ".join(str(root).split())
    output = getattr(root, "stderr", None) or getattr(root, "output", None)
    if output:
        text += " " + " ".join(str(output).split())
    return f"{type(root).__name__}: {text[:400]}"


def _interval_of(scheduler: Any) -> str:
    """Stepping interval of a scheduler passed in by the user: plateau, batch or epoch."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "plateau"
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        return "batch"
    return "epoch"


def _label_map_state(label_map: Any) -> Any:
    """A label map as plain data for the checkpoint (LabelMap objects expose to_dict())."""
    if label_map is None:
        return None
    if hasattr(label_map, "to_dict"):
        return label_map.to_dict()
    if isinstance(label_map, Mapping):
        return dict(label_map)
    if isinstance(label_map, Sequence) and not isinstance(label_map, str):
        return list(label_map)
    raise TypeError(
        f"label_map of type {type(label_map).__name__} cannot be saved; accepted: a "
        f"mapping, a sequence of labels, or an object with to_dict()"
    )


def _model_name(model: nn.Module) -> Optional[str]:
    """The create_model() name of the model ("transformer", ..., "bert"), None for others."""
    from fbdl_fast.models import model_name

    return model_name(model)


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Infinity: a diverged loss is logged as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _macro_f1_from_confusion(cm: torch.Tensor) -> float:
    """metrics.macro_f1 from a (C, C) confusion matrix (row = true, column = predicted)."""
    cm = cm.double()
    tp = cm.diagonal()
    f1 = 2 * tp / (2 * tp + (cm.sum(dim=0) - tp) + (cm.sum(dim=1) - tp))
    return f1[~f1.isnan()].mean().item()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; expected an integer >= 1")
    return value


def _set_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Tell the loader's samplers which epoch it is, so their shuffle depends on it."""
    for name in ("batch_sampler", "sampler"):
        sampler = getattr(loader, name, None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


class ProgressLog:
    """Progress for logs that are not a terminal (where tqdm bars would be noise): one line every
    `every` seconds with the posts done, posts/s and, when the number of batches is known, the
    share done and the time left. 0 logs after every batch."""

    def __init__(
        self,
        desc: str,
        every: float,
        total_batches: Optional[int] = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.desc, self.every, self.total, self.clock = desc, every, total_batches, clock
        self.start = self.last = clock()
        self.batches = self.posts = 0

    def update(self, posts: int) -> None:
        """One more batch of `posts` done; logs if `every` seconds passed since the last line."""
        self.batches += 1
        self.posts += posts
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        line = f"{self.desc}: {self.posts:,} posts, {self.posts / elapsed:,.0f} posts/s"
        if self.total:
            left = elapsed / self.batches * max(self.total - self.batches, 0)
            line += (
                f", batch {self.batches:,}/{self.total:,} "
                f"({100 * self.batches / self.total:.0f}%), ETA {_duration(left)}"
            )
        logger.info(line)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# The parts of a checkpoint that only continuing the training reads: kept in last.pt, left out
# of best.pt (see Trainer._best_state).
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "ema")


class Trainer:
    """Trains a classifier `model(input_ids, attention_mask) -> logits` on dict batches.

    Args:
        model: the network; moved to `device`.
        config: the run's ModelConfig (optimizer, scheduler, loss, AMP, clipping, patience ...).
        device: where to train; default CUDA when available, else CPU.
        run_dir: folder for best.pt, last.pt and metrics.jsonl; None writes no files.
        label_map: class names saved in checkpoints (mapping, sequence or LabelMap).
        progress: tqdm bars; None shows them only when stderr is a terminal.
        optimizer / scheduler / criterion: replace the ones built from config.
        steps_per_epoch: optimizer steps per epoch, to build the scheduler now; otherwise fit()
            builds it from len(loader) / accumulate_steps.
        accumulate_steps: loader batches per optimizer step (gradient accumulation).
        max_nonfinite_steps: steps in a row with a non-finite loss that stop training.
        compile: torch.compile the model (True, or a dict of torch.compile keyword arguments).
        log_every: when no progress bar is shown (stderr is not a terminal, or progress=False),
            log a progress line (batches, posts/s, ETA) every `log_every` seconds; None: never.
        tokenizer_fingerprint: the run's tokenizer (fbdl_fast.runs.tokenizer_fingerprint), saved
            in checkpoints so that a run folder's tokenizer.json can be checked against them.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig,
        *,
        device: Optional[Union[str, torch.device]] = None,
        run_dir: Optional[PathLike] = None,
        label_map: Any = None,
        progress: Optional[bool] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Any = None,
        criterion: Optional[nn.Module] = None,
        steps_per_epoch: Optional[int] = None,
        accumulate_steps: int = 1,
        max_nonfinite_steps: int = 5,
        compile: Union[bool, Mapping[str, Any]] = False,
        log_every: Optional[float] = None,
        tokenizer_fingerprint: Optional[str] = None,
    ) -> None:
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a fbdl_fast.ModelConfig, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.config = config
        self.accumulate_steps = _positive_int("accumulate_steps", accumulate_steps)
        self.max_nonfinite_steps = _positive_int("max_nonfinite_steps", max_nonfinite_steps)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if device is None and torch.cuda.is_available():
            # Under torchrun each rank owns the GPU init_from_env selected (cuda:LOCAL_RANK).
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = torch.device(device if device is not None else "cpu")
        self.model = model.to(self.device)
        # The EMA's copy is taken before DDP or torch.compile wrap the model: a plain module.
        self.ema: Optional[AveragedModel] = self._new_ema()
        # Multi-label: per-class decision thresholds (a checkpoint's tuned ones); None: 0.5.
        self.thresholds: Optional[list[float]] = None
        # What runs the batches: the model, in DDP when distributed, compiled when asked.
        # self.model stays the plain module: its state_dict has no "module."/"_orig_mod." keys.
        self._train_model: nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self._train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._eval_model: nn.Module = self.model
        self.compile_options: Optional[dict[str, Any]] = None
        if compile is not False:
            if not (compile is True or isinstance(compile, Mapping)):
                raise TypeError(
                    f"compile={compile!r} is invalid; expected True, False or a dict of "
                    f"torch.compile keyword arguments"
                )
            self.compile_options = {} if compile is True else dict(compile)
            # An OptimizedModule: a Module, though torch.compile is typed as returning a callable.
            self._train_model = cast(
                nn.Module, torch.compile(self._train_model, **self.compile_options)
            )
            if self.world_size == 1:
                self._eval_model = self._train_model
        self._compile_checked = self.compile_options is None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.label_map = label_map
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.log_every = log_every
        self.progress = progress
        # None: built from the config when first used. A Trainer that only predicts (a loaded
        # run) never builds one: building any torch optimizer imports torch._dynamo, +150 MiB
        # peak RSS and 1.3 s in every predict process on the CI machine.
        self._optimizer = optimizer
        # `is None`, not `or`: an empty nn.Sequential criterion is falsy.
        if criterion is None:
            criterion = losses.create_loss(config)
        self.criterion = criterion.to(self.device)
        self.amp_dtype = _amp_plan(config, self.device)
        # Loss scaling only for fp16: bf16 has fp32's exponent range and needs none.
        self.scaler = (
            torch.amp.GradScaler("cuda")
            if self.amp_dtype == torch.float16 and self.device.type == "cuda"
            else None
        )
        self._pending_scheduler_state: Optional[dict[str, Any]] = None
        # interval: "epoch", "batch" or "plateau" (see optim.scheduler_interval)
        self.scheduler: Any = scheduler
        self.scheduler_interval: Optional[str] = None
        if scheduler is not None:
            self.scheduler_interval = _interval_of(scheduler)
        elif steps_per_epoch is not None:
            self._build_scheduler(steps_per_epoch)
        self.history = History(monitor=config.monitor)
        self.epoch = 0  # epochs completed
        self.global_step = 0  # optimizer steps taken
        self._bad_epochs = 0  # epochs since the best epoch (config.monitor)
        self._nonfinite_streak = 0  # steps in a row skipped for a non-finite loss
        self._finite_epoch = 0  # the last epoch that ended with finite weights (fit sets it)
        self._last_loss = math.nan  # the latest step's loss, for the progress bar
        self._seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # current step's
        # predict()'s softmax(logits / T): a calibrated checkpoint's (fbdl_fast.calibration)
        self.temperature = 1.0
        # A convex n-gram model's fit (training.ngram_fit): outputs()'s answer on the validation
        # posts from the fit that never saw them (the served weights were refitted on those
        # posts too, so the run's report and calibration use these), and its one-line summary.
        # Saved in the checkpoints, so that a resumed run reports them again.
        self.held_out_outputs: Optional[tuple[torch.Tensor, torch.Tensor, float]] = None
        self.fit_summary: Optional[str] = None

    # ----------------------------------------------------------------------------- set-up
    @property
    def plan(self) -> str:
        """How fit() trains, as the run's first line ends: "for up to 5 epochs", or how the
        convex n-gram model is fitted."""
        if getattr(self.model, "convex", False):
            refit = self.config.extra.get("ngram_refit", True)
            refit = ", then refitted on all posts" if refit else ""
            return f"to convergence (convex fit: C chosen on validation{refit})"
        epochs = self.config.max_epochs
        return f"for up to {epochs} epoch{'s' if epochs != 1 else ''}"

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer given, else the config's over the model's parameters (built once, on
        first use)."""
        if self._optimizer is None:
            self._optimizer = optim.create_optimizer(self.model, self.config)
        return self._optimizer

    def _new_ema(self) -> Optional[AveragedModel]:
        """A fresh EMA of self.model's weights (nothing averaged yet), or None without one."""
        if self.config.ema_decay is None:
            return None
        ema = AveragedModel(
            self.model,
            multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay),
            use_buffers=False,  # buffers are copied from the model at every update
        )
        return ema.requires_grad_(False)

    def _inference_model(self) -> nn.Module:
        """The weights validation, evaluate() and predict() use: the EMA once it averaged a
        step, else the model."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self._eval_model

    def _build_scheduler(self, steps_per_epoch: int) -> None:
        if self.config.scheduler_type is None:
            return
        self.scheduler = optim.create_scheduler(self.optimizer, self.config, steps_per_epoch)
        self.scheduler_interval = optim.scheduler_interval(self.config.scheduler_type)
        if self._pending_scheduler_state is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(self._pending_scheduler_state)
            self._pending_scheduler_state = None

    def _ensure_scheduler(self, train_loader: Iterable[Any]) -> None:
        if self.scheduler is not None or self.config.scheduler_type is None:
            return
        try:
            batches = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                "train_loader has no len(), which the scheduler needs to know the "
                "steps per epoch; pass steps_per_epoch= to Trainer"
            ) from None
        self._build_scheduler(math.ceil(batches / self.accumulate_steps))  # optimizer steps

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _show_progress(self) -> bool:
        if self.progress is not None:
            return self.progress
        return sys.stderr is not None and sys.stderr.isatty()

    def _unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(input_ids, attention_mask, labels or None) on the trainer's device."""
        if isinstance(batch, Mapping):
            if "input_ids" not in batch or "attention_mask" not in batch:
                raise ValueError(
                    f"batch keys are {sorted(batch)}; a batch needs 'input_ids', "
                    f"'attention_mask' and (to train or evaluate) 'labels'"
                )
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch.get("labels")
        elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
            ids, mask, labels = batch[0], batch[1], batch[2] if len(batch) == 3 else None
        else:
            raise TypeError(
                f"a batch must be a dict with input_ids, attention_mask, labels; got "
                f"{type(batch).__name__}"
            )
        move = {"device": self.device, "non_blocking": True}
        return ids.to(**move), mask.to(**move), None if labels is None else labels.to(**move)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ----------------------------------------------------------------------------- steps
    def _forward(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """model(ids, mask) under autocast; the first compiled call turns compiler failures into
        a CompileError that says what to do."""
        with self._autocast():
            if self._compile_checked:
                return model(ids, mask)
            try:
                logits = model(ids, mask)
            except Exception as exc:
                if not _is_compile_failure(exc):
                    raise
                raise CompileError(
                    f"torch.compile could not compile {type(self.model).__name__} on "
                    f"{self.device} ({_compile_cause(exc)}); train without compile (drop "
                    f"--compile / compile=True). On a CPU, inductor needs a working C++ "
                    f"compiler (set CXX)."
                ) from exc
            self._compile_checked = True
            return logits

    def _train_group(self, group: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> bool:
        """One optimizer step over `group` (accumulated micro-batches); returns False when the
        step was skipped for a non-finite loss. Appends (loss, logits, labels) to self._seen."""
        self.optimizer.zero_grad(set_to_none=True)
        # Weights that make the summed gradients those of one batch holding every sample of the
        # group on every rank: DDP averages over ranks, hence the world_size factor.
        total = sum(len(labels) for _, _, labels in group)
        if self.world_size > 1:  # the global batch: every rank's samples of this step
            total = int(distributed.all_reduce_sum(torch.tensor([total], device=self.device)))
        losses_: list[torch.Tensor] = []
        for i, (ids, mask, labels) in enumerate(group):
            sync = i == len(group) - 1 or self.world_size == 1
            no_sync = getattr(self._train_model, "no_sync", None)
            with contextlib.nullcontext() if sync or no_sync is None else no_sync():
                logits = self._forward(self._train_model, ids, mask)
                # The loss in fp32: softmax/log of half-precision logits loses small probabilities.
                loss = self.criterion(logits.float(), labels)
                weight = len(labels) * self.world_size / total
                scaled = loss if weight == 1.0 else loss * weight
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            losses_.append(loss.detach())
            self._seen.append((loss.detach(), logits.detach(), labels))
        bad = torch.stack([~torch.isfinite(v) for v in losses_]).any().to(torch.int64)
        if int(distributed.all_reduce_sum(bad.reshape(1)).item()) > 0:
            self.optimizer.zero_grad(set_to_none=True)  # nothing of this step reaches the weights
            return False
        clip = self.config.gradient_clip
        params = [p for group_ in self.optimizer.param_groups for p in group_["params"]]
        stepped = True
        if self.scaler is not None:
            if clip > 0:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
                torch.nn.utils.clip_grad_norm_(params, clip)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # A lowered scale means inf/nan gradients: the optimizer step was skipped.
            stepped = self.scaler.get_scale() >= scale
        else:
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()
        if stepped:
            self.global_step += 1
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if self.scheduler is not None and self.scheduler_interval == "batch":
                self.scheduler.step()
        return True

    def _train_epoch(self, loader: Iterable[Any], epoch: int) -> tuple[float, float, int]:
        """Train one epoch; returns (mean training loss, training accuracy, skipped steps).

        Loss and accuracy are over the samples of the steps taken, summed over ranks."""
        self._train_model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, samples
        batches = skipped = 0
        group: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        bar = self._bar(loader, f"epoch {epoch + 1}/{self.config.max_epochs}")
        for batch in bar:
            ids, mask, labels = self._unpack(batch)
            if labels is None:
                raise ValueError("training batches need 'labels'")
            group.append((ids, mask, labels))
            batches += 1
            if len(group) < self.accumulate_steps:
                continue
            skipped += self._finish_group(group, sums, epoch)
            group = []
            if self.global_step % 10 == 0 and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{self._last_loss:.4f}", lr=f"{self._lr():.2e}")
        if group:  # the epoch's last, shorter group
            skipped += self._finish_group(group, sums, epoch)
        if distributed.all_reduce_sum(torch.tensor([batches], device=self.device)).item() == 0:
            raise ValueError("train_loader yielded no batches")
        loss_sum, correct, seen = distributed.all_reduce_sum(sums).tolist()
        if seen == 0:  # every step skipped
            return math.nan, math.nan, skipped
        return loss_sum / seen, correct / seen, skipped

    def _finish_group(
        self,
        group: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        sums: torch.Tensor,
        epoch: int,
    ) -> int:
        """Step on `group`, add its loss/accuracy to `sums`; 1 if the step was skipped, else 0."""
        self._seen = []
        if self._train_group(group):
            self._nonfinite_streak = 0
            for loss, logits, labels in self._seen:
                sums[0] += loss.double() * len(labels)
                sums[1] += self._correct(logits, labels)
                sums[2] += len(labels)
            self._last_loss = float(self._seen[-1][0])
            return 0
        self._nonfinite_streak += 1
        value = next((float(v) for v, _, _ in self._seen if not torch.isfinite(v)), math.nan)
        logger.warning(
            "epoch %d step %d: non-finite loss (%s); step skipped (%d in a row)",
            epoch + 1,
            self.global_step + 1,
            value,
            self._nonfinite_streak,
        )
        if self._nonfinite_streak >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"training stopped in epoch {epoch + 1}: {self._nonfinite_streak} optimizer "
                f"steps in a row had a non-finite loss (last: {value}; on some rank); no "
                f"checkpoint of this epoch was written, so last.pt/best.pt keep the weights of "
                f"epoch {self._finite_epoch}. Lower learning_rate (now "
                f"{self.config.learning_rate}), "
                f"set gradient_clip > 0, or check the data; max_nonfinite_steps="
                f"{self.max_nonfinite_steps} sets how many bad steps in a row are tolerated"
            )
        return 1

    def _bar(self, loader: Iterable[Any], desc: str) -> Iterable[Any]:
        if not self._show_progress():
            if self.log_every is None or self.rank != 0:
                return loader
            return self._logged(loader, desc, self.log_every)
        from tqdm.auto import tqdm

        return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)

    def _logged(self, loader: Iterable[Any], desc: str, every: float) -> Iterator[Any]:
        """The loader's batches, with a ProgressLog line every `every` seconds."""
        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        progress = ProgressLog(desc, every, total_batches=total)
        for batch in loader:
            yield batch
            size = batch["input_ids"].shape[0] if isinstance(batch, dict) else len(batch[0])
            progress.update(size * self.world_size)

    # ----------------------------------------------------------------------------- public API
    @torch.no_grad()
    def _forward_all(
        self, loader: Iterable[Any], desc: str, need_labels: bool
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], float]:
        """(logits (N, C) fp32 on CPU, labels (N,) or None, summed loss) over a loader."""
        model = self._inference_model()
        was_training = model.training
        model.eval()
        all_logits: list[torch.Tensor] = []
        all_labels: list[torch.Tensor] = []
        loss_sum = 0.0
        try:
            for batch in self._bar(loader, desc):
                ids, mask, labels = self._unpack(batch)
                if labels is None and need_labels:
                    raise ValueError(f"{desc} batches need 'labels'")
                logits = self._forward(model, ids, mask).float()
                if labels is not None:
                    loss_sum += self.criterion(logits, labels).item() * len(labels)
                    all_labels.append(labels.cpu())
                all_logits.append(logits.cpu())
        finally:
            model.train(was_training)
        if not all_logits and self.world_size == 1:
            raise ValueError(f"the {desc} loader yielded no batches")
        labels_out = torch.cat(all_labels) if all_labels else None
        return torch.cat(all_logits), labels_out, loss_sum

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """{"loss", "accuracy", "macro_f1", "num_samples"} of the model on a labelled loader.

        Distributed: each rank evaluates its shard; the sums and the confusion matrix are
        reduced, so every rank returns the metrics of the whole set. Multi-label models:
        "accuracy" is the subset accuracy, plus "micro_f1" and "hamming_loss", at
        self.thresholds (multilabel.multilabel_metrics)."""
        if self.config.multi_label:
            return self._evaluate_multi_label(loader)
        if self.world_size > 1:
            return self._evaluate_distributed(loader)
        logits, labels, loss_sum = self._forward_all(loader, "evaluate", need_labels=True)
        assert labels is not None
        return self._metrics(logits, labels, loss_sum / labels.numel())

    def _metrics(self, logits: torch.Tensor, labels: torch.Tensor, loss: float) -> dict[str, float]:
        """evaluate()'s figures of one label a post, from the logits (N, C) and labels (N,)."""
        preds = logits.argmax(dim=-1)
        return {
            "loss": loss,
            "accuracy": metrics.accuracy(preds, labels),
            "macro_f1": metrics.macro_f1(preds, labels, self.config.num_classes),
            "num_samples": float(labels.numel()),
        }

    def _correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Posts predicted right: the class, or (multi-label) every class at threshold 0.5."""
        if self.config.multi_label:
            return ((logits > 0) == (labels > 0.5)).all(dim=-1).sum()
        hard_labels = getattr(self.criterion, "hard_labels", None)
        if hard_labels is not None:  # targets that are not class ids (distill.DistillationLoss)
            labels = hard_labels(labels)
        return (logits.argmax(dim=-1) == labels).sum()

    def _evaluate_multi_label(self, loader: Iterable[Any]) -> dict[str, float]:
        """evaluate() of a multi-label model: the loss, and multilabel_metrics at
        self.thresholds; sums reduced over ranks."""
        from fbdl_fast.training.multilabel import multilabel_counts, multilabel_metrics

        classes = self.config.num_classes
        sums = torch.zeros(4 + 3 * classes, dtype=torch.float64)  # loss, then the counts
        try:
            logits, labels, loss_sum = self._forward_all(loader, "evaluate", need_labels=True)
        except ValueError as exc:  # an empty shard is fine; an empty set is not (below)
            if "yielded no batches" not in str(exc) or self.world_size == 1:
                raise
        else:
            assert labels is not None
            sums[0] = loss_sum
            sums[1:] = multilabel_counts(torch.sigmoid(logits), labels, self.thresholds)
        sums = distributed.all_reduce_sum(sums.to(self.device)).cpu()
        if sums[1].item() == 0:
            raise ValueError("the evaluate loader yielded no batches on any rank")
        return {"loss": sums[0].item() / sums[1].item(), **multilabel_metrics(sums[1:])}

    def _evaluate_distributed(self, loader: Iterable[Any]) -> dict[str, float]:
        classes = self.config.num_classes
        sums = torch.zeros(2 + classes * classes, dtype=torch.float64)  # loss, n, confusion
        try:
            logits, labels, loss_sum = self._forward_all(loader, "evaluate", need_labels=True)
        except ValueError as exc:  # an empty shard is fine; an empty set is not (below)
            if "yielded no batches" not in str(exc):
                raise
        else:
            assert labels is not None
            sums[0], sums[1] = loss_sum, labels.numel()
            cm = metrics.confusion_matrix(logits.argmax(dim=-1), labels, classes)
            sums[2:] = cm.flatten().double()
        sums = distributed.all_reduce_sum(sums.to(self.device)).cpu()
        n = sums[1].item()
        if n == 0:
            raise ValueError("the evaluate loader yielded no batches on any rank")
        cm = sums[2:].view(classes, classes)
        return {
            "loss": sums[0].item() / n,
            "accuracy": cm.diagonal().sum().item() / n,
            "macro_f1": _macro_f1_from_confusion(cm),
            "num_samples": float(n),
        }

    def predict(self, loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted class ids (N,) int64, class probabilities (N, C) float32), on CPU.

        Batches may omit 'labels'. The probabilities are softmax(logits / self.temperature):
        calibrated when the loaded checkpoint holds a temperature (train --calibrate)."""
        logits, _, _ = self._forward_all(loader, "predict", need_labels=False)
        finite.check_logits(logits)  # NaN would still give a label, with probability nan
        if self.config.multi_label:  # (N, C) bool: the classes at or above their threshold
            from fbdl_fast.training.multilabel import predict_labels

            probs = torch.sigmoid(logits)
            return predict_labels(probs, self.thresholds), probs
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return probs.argmax(dim=-1), probs

    def outputs(self, loader: Iterable[Any]) -> tuple[torch.Tensor, Optional[torch.Tensor], float]:
        """(raw logits (N, C) float32, labels (N,) or multi-hot (N, C) or None, mean loss per
        post or NaN without labels), on CPU, in the loader's order, from this process alone:
        what evaluate() and predict() sum up, for per-class reports and calibration."""
        logits, labels, loss_sum = self._forward_all(loader, "evaluate", need_labels=False)
        return logits, labels, math.nan if labels is None else loss_sum / max(len(labels), 1)

    def train(
        self, train_loader: Iterable[Any], val_loader: Iterable[Any]
    ) -> tuple[list[float], list[float], list[float], list[float]]:
        """The product design's call: fit() and return (train_losses, val_losses, train_accs,
        val_accs)."""
        return self.fit(train_loader, val_loader).as_tuple()

    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any],
        resume_from: Optional[PathLike] = None,
    ) -> History:
        """Train until config.max_epochs or early stopping; returns the History.

        resume_from: a checkpoint (e.g. run_dir/last.pt) to continue from exactly where it was
        written (a run that stopped early stays stopped). A fresh run (nothing trained yet, no
        resume) first seeds torch with config.seed, so dropout draws are reproducible.
        """
        if getattr(self.model, "convex", False):  # the n-gram model fitted to convergence
            return self._fit_convex(train_loader, val_loader, resume_from)
        self._ensure_scheduler(train_loader)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            self._trim_metrics_log()
        elif self.epoch == 0:
            # Each rank its own dropout draws; rank 0 (and a single process) uses config.seed.
            torch.manual_seed(self.config.seed + self.rank)
        # The last epoch whose weights were finite, so written to last.pt (0: none yet).
        self._finite_epoch = self.epoch
        while self.epoch < self.config.max_epochs and not self.history.stopped_early:
            index = self.epoch  # 0-based epoch index
            started = time.perf_counter()
            _set_epoch(train_loader, index)
            lr = self._lr()
            train_loss, train_acc, skipped = self._train_epoch(train_loader, index)
            val = self.evaluate(val_loader)  # reduced over ranks: every rank decides alike
            if self.scheduler is not None and self.scheduler_interval == "plateau":
                self.scheduler.step(val["loss"])
            elif self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self.epoch += 1
            seconds = time.perf_counter() - started
            diverged = self._nonfinite_weights()
            if diverged is None:
                self._finite_epoch = self.epoch
            improved = self._record_epoch(
                train_loss, train_acc, val, lr, seconds, skipped, weights_finite=diverged is None
            )
            self._end_of_epoch(improved)
            logger.info(
                "epoch %d/%d train_loss %.4f val_loss %.4f val_acc %.4f val_f1 %.4f",
                self.epoch,
                self.config.max_epochs,
                train_loss,
                val["loss"],
                val["accuracy"],
                val["macro_f1"],
            )
        return self.history

    def _fit_convex(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any],
        resume_from: Optional[PathLike],
    ) -> History:
        """The convex n-gram model's fit (training.ngram_fit), recorded as one epoch: its
        training figures, the validation figures of the chosen C's fit on the training posts
        alone (held_out_outputs keeps those logits for the run's report and calibration), and
        the checkpoints of the served, refitted weights. A finished fit, resumed, is kept."""
        from fbdl_fast.training import ngram_fit

        if resume_from is not None:
            self.load_checkpoint(resume_from)
            self._trim_metrics_log()
        if self.epoch >= 1:
            return self.history
        started = time.perf_counter()
        fit = ngram_fit.fit_convex(
            cast("NgramClassifier", self.model), train_loader, val_loader, self.config,
            world_size=self.world_size,
        )  # fmt: skip
        self.fit_summary = fit.summary()
        labels = fit.val_labels.to(self.device)
        val_loss = self.criterion(fit.val_logits.to(self.device), labels).item()
        val = self._metrics(fit.val_logits, fit.val_labels, val_loss)
        self.held_out_outputs = (fit.val_logits, fit.val_labels, val_loss)
        train = self.evaluate(train_loader)  # the served weights on the training posts
        self.epoch = 1
        self._finite_epoch = self.epoch
        seconds = time.perf_counter() - started
        improved = self._record_epoch(train["loss"], train["accuracy"], val, math.nan, seconds)
        self._end_of_epoch(improved)
        logger.info("%s val_loss %.4f val_f1 %.4f", fit.summary(), val["loss"], val["macro_f1"])
        return self.history

    def _record_epoch(
        self,
        train_loss: float,
        train_acc: float,
        val: dict[str, float],
        lr: float,
        seconds: float,
        skipped: int = 0,
        weights_finite: bool = True,
    ) -> bool:
        """Append the epoch to the history and update early stopping; True on a new best (never
        for weights that are not finite, whatever their validation loss)."""
        h = self.history
        h.skipped_steps.append(skipped)
        h.train_losses.append(train_loss)
        h.train_accs.append(train_acc)
        h.val_losses.append(val["loss"])
        h.val_accs.append(val["accuracy"])
        h.val_f1s.append(val["macro_f1"])
        h.learning_rates.append(lr)
        h.epoch_times.append(seconds)
        if self.config.monitor == "val_f1":
            better = val["macro_f1"] > h.best_val_f1
        else:
            better = val["loss"] < h.best_val_loss
        improved = weights_finite and better  # NaN never compares better
        if improved:
            h.best_val_loss, h.best_val_f1, h.best_epoch = val["loss"], val["macro_f1"], self.epoch
            self._bad_epochs = 0
        else:
            self._bad_epochs += 1
        # Lightning's rule: stop once `patience` epochs in a row did not improve (patience=0:
        # at the first epoch that does not improve).
        h.stopped_early = (
            not improved
            and self._bad_epochs >= self.config.patience
            and self.epoch < self.config.max_epochs
        )
        return improved

    def _nonfinite_weights(self) -> Optional[str]:
        """The first weight tensor holding NaN or inf (logged with the epoch), or None."""
        name = finite.nonfinite_tensor(self.model.state_dict())
        if name is not None:
            logger.warning(
                "epoch %d: the weights hold NaN or infinite values (first: %s); the epoch's "
                "checkpoints are not written, last.pt keeps the last finite weights",
                self.epoch,
                name,
            )
        return name

    def _end_of_epoch(self, improved: bool) -> None:
        """Write the checkpoints and the metrics line of the epoch just finished (rank 0 only).

        Order: best.pt, the metrics line, last.pt. A kill between any two leaves last.pt at the
        previous epoch; resuming from it trims the log and rewrites best.pt as it was. An epoch
        that ended with weights that are not finite (fit sets _finite_epoch) gets the metrics
        line only, as if killed before last.pt: last.pt keeps the last finite state."""
        # Every rank's RNG state (dropout draws differ per rank), gathered by all of them.
        rngs = distributed.all_gather_object(rng_state()) if self.world_size > 1 else None
        if self.run_dir is None or self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if rngs is not None:
            state["rng_ranks"] = rngs
        if improved:
            save_checkpoint(self._best_state(state), self.run_dir / BEST_CHECKPOINT)
        h, i = self.history, self.epoch - 1
        line = {
            "epoch": self.epoch,
            "train_loss": h.train_losses[i],
            "train_acc": h.train_accs[i],
            "val_loss": h.val_losses[i],
            "val_acc": h.val_accs[i],
            "val_f1": h.val_f1s[i],
            "lr": h.learning_rates[i],
            "epoch_time_s": h.epoch_times[i],
            "skipped_steps": h.skipped_steps[i],
            "best": improved,
            "stopped_early": h.stopped_early,
        }
        entry = {k: _finite_or_none(v) for k, v in line.items()}
        append_line(self.run_dir / METRICS_LOG, json.dumps(entry) + "\n")  # no symlink followed
        if self._finite_epoch == self.epoch:
            save_checkpoint(state, self.run_dir / LAST_CHECKPOINT)

    def _trim_metrics_log(self) -> None:
        """Keep the metrics lines of the epochs the resumed checkpoint holds, drop the rest (a
        killed run may have logged an epoch whose last.pt it never wrote, or half a line)."""
        if self.run_dir is None or self.rank != 0 or not (self.run_dir / METRICS_LOG).is_file():
            return
        kept = []
        for raw in (self.run_dir / METRICS_LOG).read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            epoch = entry.get("epoch") if isinstance(entry, dict) else None
            if isinstance(epoch, int) and epoch <= self.epoch:
                kept.append(raw + "\n")
        text = "".join(kept)
        write_atomic(self.run_dir / METRICS_LOG, text)

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (see fbdl_fast.checkpoint)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model_class": type(self.model).__name__,
            "model_name": _model_name(self.model),  # rebuild with create_model(name, config)
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng_state(),
            "config": self.config.to_dict(),
            "label_map": _label_map_state(self.label_map),
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "history": self.history.to_dict(),
            "early_stopping": {"bad_epochs": self._bad_epochs},
            "nonfinite_streak": self._nonfinite_streak,
            "accumulate_steps": self.accumulate_steps,
            "world_size": self.world_size,
            "ema": None if self.ema is None else self._ema_state(self.ema),
            "held_out": None if self.held_out_outputs is None else self._held_out_state(),
        }

    def _held_out_state(self) -> dict[str, Any]:
        assert self.held_out_outputs is not None
        logits, labels, loss = self.held_out_outputs
        return {"logits": logits, "labels": labels, "loss": loss, "summary": self.fit_summary}

    @staticmethod
    def _ema_state(ema: AveragedModel) -> dict[str, Any]:
        return {"n_averaged": int(ema.n_averaged), "model": ema.module.state_dict()}

    def _best_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """best.pt: the checkpoint with the validated weights as its model (the EMA's, once
        it averaged a step), marked by "weights", without what only resuming needs
        (RESUME_ONLY: last.pt has it, and a run resumes from last.pt). AdamW's moments are twice
        the weights' size, so this keeps a fine-tuned MiniLM's best.pt at 90 MB, not 269 MB:
        a third of the bytes to write every improved epoch, and to read and hash every load."""
        ema = state.get("ema")
        best = {key: value for key, value in state.items() if key not in RESUME_ONLY}
        if ema is None or ema["n_averaged"] == 0:
            return best
        return {**best, "model": ema["model"], "weights": "ema"}

    def save_checkpoint(self, path: PathLike) -> Path:
        """Write state_dict() to `path` atomically (temporary file + rename)."""
        return save_checkpoint(self.state_dict(), path)

    def load_checkpoint(self, path: PathLike, *, model_only: bool = False) -> dict[str, Any]:
        """Restore this trainer from a checkpoint and return the raw checkpoint dict.

        model_only=True loads the model weights alone (to evaluate or predict); otherwise the
        optimizer, scheduler, scaler, RNG states, epoch, history and early-stopping state too,
        so that fit() continues the run exactly.
        """
        # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest to the
        # parameters' device.
        state = load_checkpoint(path, map_location="cpu")
        self._restore(state, path, model_only)
        return state

    def load_state(
        self, state: dict[str, Any], path: PathLike = "<memory>", *, model_only: bool = False
    ) -> None:
        """As load_checkpoint, from a checkpoint dict already read (`path` names it in errors)."""
        self._restore(state, path, model_only)

    @classmethod
    def from_checkpoint(cls, path: PathLike, **kwargs: Any) -> Trainer:
        """A Trainer around the reference model (create_model) a checkpoint was trained with,
        its weights loaded: for evaluate() and predict(). kwargs go to Trainer (device, ...).

        To continue training instead, build the Trainer and call fit(..., resume_from=path).
        """
        from fbdl_fast.models import create_model

        state = load_checkpoint(path, map_location="cpu")
        require_keys(state, ("model", "config"), path)
        name = state.get("model_name")
        if name is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a {state.get('model_class')!r}, not a model "
                f"create_model() can build; construct it yourself and call "
                f"Trainer(model, config).load_checkpoint(path, model_only=True)"
            )
        config = ModelConfig.from_dict(state["config"])
        kwargs.setdefault("label_map", state.get("label_map"))
        trainer = cls(create_model(name, config), config, **kwargs)
        trainer._restore(state, path, model_only=True)
        return trainer

    def _load_weights(self, module: nn.Module, weights: Mapping[str, Any], path: PathLike) -> None:
        try:
            module.load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this model "
                f"({type(self.model).__name__}): {_misfit(module, weights, exc)}"
            ) from exc

    def _restore(self, state: dict[str, Any], path: PathLike, model_only: bool) -> None:
        if not model_only and "model" in state and "optimizer" not in state:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds the weights to serve (a best.pt), not the "
                f"optimizer state to continue training: resume from the run's {LAST_CHECKPOINT}"
            )
        require_keys(
            state,
            ("model",)
            if model_only
            else ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "history"),
            path,
        )
        ema = state.get("ema")
        # model_only (evaluate, predict): the validated weights, i.e. last.pt's EMA when it has
        # one; to continue training: the trained weights, and the EMA as it was.
        validated = model_only and ema is not None and state.get("weights") != "ema"
        weights = state["model"]
        if validated and ema is not None and ema["n_averaged"] > 0:  # validated implies ema
            weights = ema["model"]
        self._load_weights(self.model, weights, path)
        self.thresholds = state.get("thresholds")  # multilabel.store_thresholds wrote them
        if self.label_map is None:
            self.label_map = state.get("label_map")
        # fitted for these weights: dropped when training continues from them
        self.temperature = temperature_of(state, path) if model_only else 1.0
        if model_only:
            self.ema = self._new_ema()  # averages from the loaded weights if trained further
            return
        if self.ema is not None:
            if ema is None:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} has no EMA of the weights, but this run "
                    f"keeps one (ema_decay={self.config.ema_decay}); resume it without EMA"
                )
            self._load_weights(self.ema.module, ema["model"], path)
            self.ema.n_averaged.fill_(int(ema["n_averaged"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            else:  # built in fit() once the loader's length is known
                self._pending_scheduler_state = state["scheduler"]
        if state["scaler"] is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks")  # written by a distributed run: one state per rank
        if ranks is not None and len(ranks) == self.world_size:
            set_rng_state(ranks[self.rank])
        else:  # a single process, or another world size: rank 0's draws (not bit-exact then)
            set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state.get("global_step", 0))
        self.history = History.from_dict(state["history"])
        self._bad_epochs = int(state.get("early_stopping", {}).get("bad_epochs", 0))
        self._nonfinite_streak = int(state.get("nonfinite_streak", 0))
        held_out = state.get("held_out")  # a convex n-gram fit's (checkpoints before it: none)
        if held_out is not None:
            self.held_out_outputs = (held_out["logits"], held_out["labels"], held_out["loss"])
            self.fit_summary = held_out["summary"]


# The product design's name.
FacebookPostsTrainer = Trainer


def _misfit(module: nn.Module, weights: Mapping[str, Any], error: RuntimeError) -> str:
    """Why `weights` do not load into `module`, in one line: the names missing and unexpected
    (torch's own message lists every name, one a line), or torch's first line (a size); an int8
    export's names (".int8") say which checkpoint reads it."""
    expected, given = set(module.state_dict()), set(weights)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if not (missing or unexpected):
        return " ".join(str(error).split())
    parts = [
        f"{len(names)} {what}, {names[0]!r} first"
        for names, what in ((missing, "weights missing"), (unexpected, "unexpected"))
        if names
    ]
    if any(name.endswith(".int8") for name in unexpected):
        parts.append("it is an int8 export: load it as the checkpoint int8")
    return "; ".join(parts)


__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "METRICS_LOG",
    "CheckpointError",
    "CompileError",
    "FacebookPostsTrainer",
    "History",
    "NonFiniteLossError",
    "ProgressLog",
    "Trainer",
    "cpu_has_native_bf16",
]
