"""A training run as one library call: what `fbdl-fast train` does, for Python.

    result = fbdl_fast.train("posts.csv", model="cnn", epochs=3, output="runs/cnn")
    result = fbdl_fast.train(texts=["win a FREE phone", ...], labels=["spam", ...], model="cnn")

    request, config = train_request("cnn", data="posts.csv", epochs=3)   # training.request
    result = train_run(request, config, say=print)

train_run, in order: checks the request against its config (TrainError naming the field, before
any data is read); locks and prepares the run folder (fbdl_fast.runs: a new run is built under
`.NAME.partial`, --resume continues one); reads and splits the posts; trains the tokenizer (or
loads the pretrained encoder's, or the run's own when resuming); resolves the class weights
(losses.loss_class_weights); creates the run folder, or checks that the resumed run started as
this request asks; builds the loaders (the sampler, multi-label targets, a teacher's soft targets
when distilling) and fits; then, on the validation posts, fits the calibration or tunes the
multi-label thresholds, writes report.md and curves.png, and publishes the folder under its name.

Under torchrun (WORLD_SIZE > 1) every rank calls train_run: rank 0 alone writes the run folder,
speaks through `say` and logs warnings. Warnings about the data or a diverged model go to this
module's logger (logging.getLogger("fbdl_fast.training.session")); progress lines go to `say`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from fbdl_fast import runs
from fbdl_fast.config import ModelConfig
from fbdl_fast.files import sha256_of
from fbdl_fast.runs import PROG, RUN_TOKENIZER
from fbdl_fast.training import ngram_baseline, presets
from fbdl_fast.training.finish import check_val_split, finish_multi_label, finish_single_label
from fbdl_fast.training.loading import DEFAULT_THREADS
from fbdl_fast.training.request import (
    FOCAL_ALPHA_FROM_WEIGHTS,
    TrainError,
    TrainRequest,
    train_request,
)

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fbdl_fast.calibration import TemperatureFit
    from fbdl_fast.data import Label, LabelMap, LabelSet, Posts
    from fbdl_fast.tokenizer import Tokenizer
    from fbdl_fast.training.distributed import DistContext
    from fbdl_fast.training.trainer import History, Trainer

logger = logging.getLogger(__name__)

Say = Callable[[str], None]
IN_MEMORY = "<in-memory>"  # config.json's data source for posts given as Posts, not a file


@dataclass
class TrainResult:
    """What train_run made: the published run folder and how its training went."""

    run_dir: Path
    history: History
    training_seconds: float  # fit(): training and validation
    total_seconds: float  # the whole call: data, tokenizer, fit, finishing, publishing
    multi_label: bool = False
    calibration: Optional[TemperatureFit] = None  # calibrate=True (and finite logits)
    thresholds: Optional[list[float]] = None  # multi_label: each class's, in label order
    validation: Optional[dict[str, float]] = None  # multi_label: metrics at the thresholds
    is_main: bool = True  # False on torchrun's other ranks (rank 0 wrote the run)
    baseline: Optional[ngram_baseline.BaselineResult] = None  # n-gram baseline, same split

    @property
    def best_epoch(self) -> int:
        """The 1-based epoch of best.pt (the last one when no epoch improved)."""
        return self.history.best_epoch or self.history.epochs

    @property
    def best(self) -> dict[str, float]:
        """val_loss, val_acc and val_macro_f1 of the best epoch."""
        i = self.best_epoch - 1
        history = self.history
        return {
            "val_loss": history.val_losses[i],
            "val_acc": history.val_accs[i],
            "val_macro_f1": history.val_f1s[i],
        }

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a non-finite loss, over the whole run."""
        return sum(self.history.skipped_steps)


def train_run(request: TrainRequest, config: ModelConfig, say: Optional[Say] = None) -> TrainResult:
    """Train the run `request` asks for, with `config` as its ModelConfig template, as
    `fbdl-fast train` does; return the TrainResult.

    The template's sizes, learning rate, loss etc. are the run's; train_run fills in what the data
    decides (vocab_size, num_classes, pad_token_id; class_weights or focal_alpha from
    request.class_weights; multi_label from the request) and, for a fine-tuned encoder
    (request.model "minilm"), its checkpoint's sizes. `say` receives the progress lines (None:
    silent). Errors: TrainError (a ValueError) naming the request's or config's field, runs.RunError
    for the run folder, the readers' ValueError / FileNotFoundError for the data; an interrupted
    run that kept a checkpoint to resume says so in a note on the exception.

    Threads: torch's intra-op CPU threads are request.threads for the call (default 1, the CLI's
    --threads) and restored afterwards, also on error. The batches are built in the main process,
    so more threads only split each small matrix product, and on a busy machine they wait on each
    other: 2 threads made the README's tour 1.7x slower with one core busy, 13% faster with both
    free (docs/library.md, benches/studies/tour_vs_cli.py).
    """
    import torch

    from fbdl_fast.training import distributed

    config = request.validate(config)  # before any data is read
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(request.threads)
    try:
        ctx = distributed.init_from_env(request.device)  # single process: starts nothing
        try:
            with _one_voice(ctx):
                return _train(request, config, ctx, say if ctx.is_main else None)
        finally:
            distributed.teardown(ctx)
    finally:
        torch.set_num_threads(previous_threads)


def train(
    data: Any = None,
    *,
    texts: Optional[Sequence[str]] = None,
    labels: Optional[Sequence[Any]] = None,
    model: str = "transformer",
    output: Optional[Union[str, os.PathLike[str]]] = None,
    threads: int = DEFAULT_THREADS,
    say: Optional[Say] = None,
    **fields: Any,
) -> TrainResult:
    """Train a model from Python as `fbdl-fast train` does, with its defaults for `model`.

    `data` is a posts file (.csv, .tsv, .jsonl) or Posts; or give `texts` and `labels` (for
    multi_label=True, each a list of labels or a "a|b" string). `output`: the run folder (None:
    runs/MODEL-YYYYmmdd-HHMMSS); `threads`: torch's threads during the call (see train_run).
    Every other keyword is a TrainRequest field (val_fraction, class_weights, resume, device,
    ...) or a ModelConfig field (epochs and lr name max_epochs and learning_rate): see
    training.request.train_request. Returns train_run's TrainResult.

        result = fbdl_fast.train(texts=texts, labels=labels, model="cnn", epochs=3)
        fbdl_fast.load_run(result.run_dir).predict(["win a free phone"])
    """
    if (data is None) == (texts is None):
        raise TrainError("give either data (a posts file or Posts) or texts and labels")
    if texts is not None:
        data = posts_in_memory(
            texts,
            labels,
            multi_label=bool(fields.get("multi_label", False)),
            label_separator=fields.get("label_separator", "|"),
        )
    request, config = train_request(model, data=data, output=output, threads=threads, **fields)
    return train_run(request, config, say=say)


def posts_in_memory(
    texts: Sequence[str],
    labels: Optional[Sequence[Any]],
    *,
    multi_label: bool = False,
    label_separator: str = "|",
) -> Posts:
    """Posts from texts and their labels, read as a file's labels are (data.in_memory:
    normalised, with the same warnings); TrainError naming the first item that is not one."""
    from fbdl_fast.data.in_memory import posts_from_lists

    try:
        return posts_from_lists(
            texts, labels, IN_MEMORY, multi_label=multi_label, label_separator=label_separator
        )
    except ValueError as err:
        raise TrainError(str(err)) from None


def train_tokenizer(texts: Sequence[str], vocab_size: int, style: str = "social") -> Tokenizer:
    """A tokenizer trained on `texts` in one of presets.TOKENIZER_STYLES."""
    from fbdl_fast.tokenizer import Tokenizer

    return Tokenizer.train(list(texts), vocab_size=vocab_size, **presets.TOKENIZER_STYLES[style])


def posts_sha256(posts: Posts) -> str:
    """SHA-256 of the posts' texts and labels in order, each length-prefixed (so no separator can
    be forged): what config.json records for posts that come from no file."""
    digest = hashlib.sha256()
    for item in [*posts.texts, *(json.dumps(label) for label in posts.labels or [])]:
        data = item.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the steps


@contextlib.contextmanager
def _one_voice(ctx: DistContext) -> Iterator[None]:
    """Rank 0 logs; the other ranks only warn (the level is restored afterwards)."""
    package = logging.getLogger("fbdl_fast")
    level = package.level
    if not ctx.is_main:
        package.setLevel(logging.WARNING)
    try:
        yield
    finally:
        package.setLevel(level)


def _say(say: Optional[Say], message: str) -> None:
    if say is not None:
        say(message)


def _train(
    request: TrainRequest, config: ModelConfig, ctx: DistContext, say: Optional[Say]
) -> TrainResult:
    from fbdl_fast.training import distributed

    started_all = time.perf_counter()
    # Under torchrun every rank must agree on the folder (the default name holds a timestamp).
    out = Path(
        distributed.broadcast_object(
            request.output or f"runs/{request.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    )
    with contextlib.ExitStack() as stack:
        # Rank 0 locks the run and checks the folders; every rank stops, or none.
        problem: Optional[str] = None
        notices: list[str] = []
        source = runs.partial_dir(out)
        if ctx.is_main:
            try:
                out = runs.resolve_output(out)
                stack.enter_context(runs.locked(out))
                source, notices = runs.prepare(out, request.resume, request.overwrite)
            except runs.RunError as err:
                problem = str(err)
        problem, out, source = distributed.broadcast_object((problem, out, source))
        if problem:
            raise runs.RunError(problem)
        for notice in notices:
            _say(say, notice)
        if ctx.is_main:  # under the lock: a refusal from here on leaves no partial folder
            stack.push(runs.discard_on_error(runs.partial_dir(out)))
        return _Run(request, config, ctx, out, say).train(source, started_all)


class _Run:
    """One call's run `out` (locked and checked by rank 0): its steps share these."""

    def __init__(
        self,
        request: TrainRequest,
        config: ModelConfig,
        ctx: DistContext,
        out: Path,
        say: Optional[Say],
    ) -> None:
        from fbdl_fast.models import FINE_TUNED

        self.request, self.config, self.ctx, self.out, self.say = request, config, ctx, out, say
        self.partial = runs.partial_dir(out)
        self.pretrained = FINE_TUNED[request.model][1] if request.model in FINE_TUNED else None
        self.in_memory = not isinstance(request.data, (str, os.PathLike))
        self.data_name = IN_MEMORY if self.in_memory else str(request.data)

    def train(self, source: Path, started_all: float) -> TrainResult:
        """Train the run, continuing `source` when resuming; publish it on rank 0."""
        from fbdl_fast.models import NgramClassifier, architecture, create_model
        from fbdl_fast.training import distributed
        from fbdl_fast.training.trainer import Trainer

        request, ctx = self.request, self.ctx
        posts, label_map = self._read_posts()
        train, val = self._split(posts, label_map)
        tokenizer = self._tokenizer(train, source)
        config = self._fill_config(tokenizer, label_map, train)
        meta = self._meta(config, posts, train, val, tokenizer)
        if request.distillation is not None:  # the teacher's labels must be the data's
            meta["distillation"] = request.distillation.meta(label_map)
        if request.resume:
            self._check_resume(source, meta, label_map)
        elif ctx.is_main:
            runs.create(self.partial, meta, tokenizer, label_map)
        distributed.barrier()  # the partial folder exists before any rank trains
        train_loader, val_loader, criterion = self._loaders(
            train, val, tokenizer, label_map, config
        )
        distill = request.distillation  # its student may start from the teacher's weights
        pretrained = None if distill is not None and distill.shares_tokenizer else self.pretrained
        model = create_model(architecture(request.model), config, pretrained=pretrained)
        if hasattr(model, "index_char_ngrams"):  # the n-gram model reads its vocabulary's text
            cast(NgramClassifier, model).index_char_ngrams(tokenizer)
        if distill is not None:
            distill.init_student(model, label_map)
        trainer = Trainer(
            model,
            config,
            run_dir=self.partial,  # the trainer writes on rank 0 only
            label_map=label_map,
            device=ctx.device or request.device,
            accumulate_steps=request.accumulate,
            max_nonfinite_steps=request.max_nonfinite,
            compile=request.compile,
            criterion=criterion,
            tokenizer_fingerprint=runs.tokenizer_fingerprint(tokenizer),
            log_every=request.progress_every,
        )
        resume_from = self.partial / runs.LAST_CHECKPOINT if request.resume else None
        _say(
            self.say,
            f"{'resuming' if resume_from else 'training'} {presets.TITLES[request.model]} "
            f"({sum(p.numel() for p in model.parameters()):,} parameters) on {trainer.device}"
            + (f" x {ctx.world_size} processes" if ctx.world_size > 1 else "")
            + f" {trainer.plan}",
        )
        started = time.perf_counter()
        history = self._fit(trainer, train_loader, val_loader, resume_from)
        elapsed = time.perf_counter() - started
        result = TrainResult(self.out, history, elapsed, 0.0, request.multi_label)
        result.is_main = ctx.is_main
        if ctx.is_main:
            trained = f"{presets.TITLES[request.model]} trained on {self.data_name}"
            if request.multi_label:  # its own ending: thresholds, metrics of several labels
                result.thresholds, result.validation = finish_multi_label(
                    trainer,
                    val_loader,
                    self.partial,
                    tune=request.tune_thresholds,
                    name=self.out.name,
                    trained=trained,
                    say=lambda message: _say(self.say, message),
                )
            else:
                result.calibration = finish_single_label(
                    trainer,
                    val_loader,
                    self.partial,
                    calibrate=request.calibrate,
                    name=self.out.name,
                    trained=trained,
                    train_posts=len(train),
                    warn=logger.warning,
                )
            result.baseline = ngram_baseline.beside_run(request, trainer, train, val, tokenizer)
            runs.publish(self.partial, self.out, request.overwrite or request.resume)
        result.total_seconds = time.perf_counter() - started_all
        return result

    def _read_posts(self) -> tuple[Posts, LabelMap]:
        """The posts (a file, or Posts as given) and their label map: at least 2 classes."""
        from fbdl_fast.data import LabelMap, load_posts

        request = self.request
        if self.in_memory:
            posts: Posts = request.data  # type: ignore[assignment]
        else:
            posts = load_posts(
                request.data,  # type: ignore[arg-type]
                request.text_column,
                request.label_column,
                errors=request.encoding_errors,
                label_separator=request.label_separator if request.multi_label else None,
            )
        assert posts.labels is not None
        if request.multi_label:
            label_map = LabelMap.from_label_sets(cast("list[LabelSet]", posts.labels))
        else:
            label_map = LabelMap.from_labels(cast("list[Label]", posts.labels))
        if len(label_map) < 2:
            raise TrainError(
                f"{self.data_name} has a single label ({label_map.labels[0]!r}); a "
                "classifier needs at least 2 classes"
            )
        return posts, label_map

    def _split(self, posts: Posts, label_map: LabelMap) -> tuple[Posts, Posts]:
        """The seeded split (stratified for one label a post: several labels a post make too
        many label sets to stratify on), said, and the labels' warnings logged."""
        from fbdl_fast.data import describe_labels, label_warnings, split_posts

        multi_label = self.request.multi_label
        train, val = split_posts(
            posts, self.request.val_fraction, self.config.seed, stratify=not multi_label
        )
        _say(
            self.say,
            f"{len(posts)} posts from {self.data_name}: {len(train)} train / {len(val)} "
            f"validation, {len(label_map)} classes ({describe_labels(label_map.labels)})",
        )
        check_val_split(val, self.request.calibrate)  # known now: refused before any training
        if self.ctx.is_main:  # after a refusal, which makes them moot
            for warning in label_warnings(train, val):
                logger.warning(f"{self.data_name}: {warning}")
        return train, val

    def _tokenizer(self, train: Posts, source: Path) -> Tokenizer:
        """The run's own when resuming, the checkpoint's for a fine-tuned encoder, else one
        trained on the training posts by rank 0 and sent to the others."""
        from fbdl_fast.models.bert import load_tokenizer
        from fbdl_fast.tokenizer import Tokenizer
        from fbdl_fast.training import distributed

        if self.request.resume:
            return Tokenizer.from_file(source / RUN_TOKENIZER)
        distill = self.request.distillation
        if distill is not None and distill.shares_tokenizer:  # a student of the teacher's
            return distill.teacher.tokenizer
        if self.pretrained is not None:  # its vocab.txt, read by every rank
            return load_tokenizer(self.pretrained, spell_emoji=self.request.spell_emoji)
        text = None
        if self.ctx.is_main:
            style, vocab_size = self._tokenizer_settings()
            text = train_tokenizer(train.texts, vocab_size, style).to_str()
        return Tokenizer.from_str(distributed.broadcast_object(text))

    def _tokenizer_settings(self) -> tuple[str, int]:
        """(style, vocabulary size asked for), as config.json records them."""
        request = self.request
        return presets.tokenizer_settings(
            request.model, request.tokenizer_style, request.vocab_size
        )

    def _fill_config(self, tokenizer: Tokenizer, label_map: LabelMap, train: Posts) -> ModelConfig:
        """The template with what the data decides, and a fine-tuned encoder's sizes."""
        from fbdl_fast.models import pretrained_model_config
        from fbdl_fast.training.losses import loss_class_weights

        request = self.request
        try:
            weights = loss_class_weights(
                request.class_weights,
                train,
                label_map,
                as_focal_alpha=request.focal_alpha_from_weights,
            )
        except ValueError as err:
            raise TrainError(f"class_weights: {err}") from None
        config = dataclasses.replace(
            self.config,
            vocab_size=tokenizer.vocab_size,
            num_classes=len(label_map),
            pad_token_id=tokenizer.pad_token_id,
            **weights,
        )
        if self.pretrained is not None:  # the checkpoint's sizes, and where its weights are
            config = pretrained_model_config(config, self.pretrained)
        if request.distillation is not None:  # a student may take the teacher's sizes
            config = request.distillation.student_config(config)
        return config

    def _meta(
        self, config: ModelConfig, posts: Posts, train: Posts, val: Posts, tokenizer: Tokenizer
    ) -> dict[str, Any]:
        """config.json: the model, its config, where the data came from, the options as given."""
        from fbdl_fast import __version__

        request = self.request
        style, vocab_size = self._tokenizer_settings()
        choice, data_file = request.class_weights, request.data_file
        return {
            "model": request.model,
            "model_config": config.to_dict(),
            "data": {
                "source": self.data_name,
                "text_column": request.text_column,
                "label_column": request.label_column,
                "val_fraction": request.val_fraction,
                # --resume refuses other data under the same name
                "sha256": posts_sha256(posts) if data_file is None else sha256_of(data_file),
                "tokenizer_style": style,
                "tokenizer_vocab_size": vocab_size,  # asked for (the trained one may be less)
                # multi-label runs; None: one label a post
                "label_separator": request.label_separator if request.multi_label else None,
                # As asked for (the run's tokenizer.json holds it): --resume refuses a change.
                "spell_emoji": self.pretrained is not None and request.spell_emoji,
                "train_posts": len(train),
                "val_posts": len(val),
            },
            "training": {
                "accumulate": request.accumulate,
                "world_size": self.ctx.world_size,
                # the options as given; model_config holds the weights, sampler and decay
                "class_weights": (
                    {str(k): v for k, v in choice.items()}
                    if isinstance(choice, Mapping)
                    else os.fspath(choice)
                ),
                "focal_alpha": (
                    FOCAL_ALPHA_FROM_WEIGHTS
                    if request.focal_alpha_from_weights
                    else self.config.focal_alpha
                ),
                "sampler": config.sampler,
                "ema": config.ema_decay,
                "calibrate": request.calibrate,
            },
            "fbdl_fast_version": __version__,
        }

    def _check_resume(self, source: Path, meta: dict[str, Any], label_map: LabelMap) -> None:
        """TrainError unless the run in `source` started as this request asks; a finished run is
        continued in a copy (rank 0), published when done."""
        from fbdl_fast.data import LabelMap

        stored = runs.read_config(source)
        diffs = runs.resume_mismatch(stored, meta)
        distill = self.request.distillation
        if distill is not None:
            diffs += distill.resume_mismatch(stored, meta["distillation"])
        elif "distillation" in stored:  # its loss needs the teacher's logits
            diffs.append(f"the run was made by `{PROG} distill`: resume it with distill")
        if diffs or LabelMap.load(source / runs.RUN_LABELS) != label_map:
            raise TrainError(
                f"resume=True continues {self.out} as it was started, but this command differs: "
                f"{'; '.join(diffs) or 'the labels in ' + self.data_name}; repeat the original "
                "options, or train a new run"
            )
        if self.ctx.is_main and source != self.partial:  # a finished run: continue a copy
            runs.continue_finished(self.out)

    def _loaders(
        self,
        train: Posts,
        val: Posts,
        tokenizer: Tokenizer,
        label_map: LabelMap,
        config: ModelConfig,
    ) -> tuple[DataLoader, DataLoader, Any]:
        """(train loader, validation loader, criterion or None: the config's loss)."""
        from fbdl_fast.data import build_dataloaders

        distill = self.request.distillation
        if distill is not None:  # targets carry the teacher's logits (cached in the run)
            return distill.loaders(self.partial, train, val, tokenizer, label_map, config, self.say)
        train_loader, val_loader = build_dataloaders(
            train,
            val,
            tokenizer,
            label_map,
            config,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
        )
        return train_loader, val_loader, None

    def _fit(
        self,
        trainer: Trainer,
        train_loader: DataLoader,
        val_loader: DataLoader,
        resume_from: Optional[Path],
    ) -> History:
        """trainer.fit; on failure the partial folder goes unless it holds a checkpoint to
        resume, which the error (a TrainError) or a note on the exception then names."""
        from fbdl_fast.training.trainer import CompileError

        try:
            return trainer.fit(train_loader, val_loader, resume_from=resume_from)
        except BaseException as exc:
            kept = self.ctx.is_main and runs.discard(self.partial)
            hint = (
                f"the run so far is kept in {self.partial}: repeat the command with "
                "resume=True to continue it"
            )
            if isinstance(exc, (FloatingPointError, CompileError)):
                raise TrainError(f"{exc}; {hint}" if kept else str(exc)) from exc
            if kept:
                exc.add_note(hint)
            raise


__all__ = [
    "IN_MEMORY",
    "TrainResult",
    "posts_in_memory",
    "posts_sha256",
    "train",
    "train_run",
    "train_tokenizer",
]
