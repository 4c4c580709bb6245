"""`fbdl-fast predict`: label new posts with a trained run."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Callable, Optional

from fbdl_fast.cli.common import (
    HelpFormatter,
    UsageError,
    add_run_options,
    check_device,
    load_for_inference,
    quiet_stdout,
    say,
    text_column,
)
from fbdl_fast.training.loading import PREDICT_CHUNK, Prediction

_json_str = json.encoder.encode_basestring  # type: ignore[attr-defined]

# The column an --output keeps when the input has it and --keep-columns is not given: a post's
# id is what joins the predictions back to the posts.
DEFAULT_KEPT = "id"


def _predict(args: argparse.Namespace) -> int:
    import contextlib

    from tqdm import tqdm  # type: ignore[import-untyped]

    from fbdl_fast.data import iter_posts
    from fbdl_fast.files import open_atomic
    from fbdl_fast.training.trainer import ProgressLog

    if (args.data is None) == (not args.text):
        raise UsageError("give either --data FILE or --text TEXT (repeatable), not both")
    out = Path(args.output) if args.output else None
    fmt = _output_format(out)
    if out is not None and out.exists() and not args.overwrite:
        raise UsageError(f"output file {out} already exists; pass --overwrite to replace it")
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"--output {out}: folder {out.parent} does not exist")
    check_device(args.device)
    run = load_for_inference(args)
    keep = [name.strip() for name in args.keep_columns.split(",")] if args.keep_columns else []
    posts: Iterator[tuple[str, tuple[Any, ...]]]
    if args.data is None:
        if keep:
            raise UsageError("--keep-columns needs --data FILE (--text posts have no columns)")
        posts = ((text, ()) for text in args.text)
    else:
        column = text_column(args, run.meta)
        if args.keep_columns is None:
            keep = default_kept(args.data, column, args.encoding_errors)
        _check_kept(keep, run.names, run.config.multi_label)
        found = iter_posts(args.data, column, None, errors=args.encoding_errors, keep=keep)
        posts = ((post.text, post.kept) for post in found)
    # The kept columns of the posts read and not yet written: one chunk's at most.
    kept_columns: deque[tuple[Any, ...]] = deque()

    def texts() -> Iterator[str]:
        for text, kept in posts:
            kept_columns.append(kept)
            yield text

    count = 0
    with contextlib.ExitStack() as stack:
        # --output: a temporary file renamed at the end, so a failure leaves no half file.
        # Without --overwrite it is created exclusively: a file that appeared meanwhile (another
        # predict started at once) is never replaced.
        sink = (
            sys.stdout
            if out is None
            else stack.enter_context(open_atomic(out, replace=args.overwrite))
        )
        write = _prediction_writer(sink, fmt, run.names, keep, run.config.multi_label)
        # disable=None: a bar only when stderr is a terminal
        bar = stack.enter_context(
            tqdm(desc="predict", unit=" posts", disable=True if args.quiet else None)
        )
        log = (
            None
            if bar.disable is False or args.quiet
            else ProgressLog("predict", args.progress_every)
        )
        try:
            # PREDICT_CHUNK posts read, predicted and written at a time: memory holds one chunk.
            chunks = run.predict_chunks(texts(), batch_size=args.batch_size, chunk=PREDICT_CHUNK)
            for chunk in chunks:
                for prediction, probs in zip(chunk, _rounded_rows(chunk)):
                    _write_prediction(write, prediction, probs, kept_columns.popleft())
                count += len(chunk)
                bar.update(len(chunk))
                if log is not None:
                    log.update(len(chunk))
            sink.flush()
        except BrokenPipeError:
            if out is not None:
                raise
            # `predict ... | head`: the reader has all it wants. Stop quietly, as `cat` does.
            quiet_stdout()
            return 0
    if out is not None:
        say(args, f"{count} predictions written to {out}")
    return 0


def default_kept(data: str, column: str, encoding_errors: str) -> list[str]:
    """The columns predict keeps when --keep-columns is not given: DEFAULT_KEPT when the posts
    file has that column (and it is not the text column), else none."""
    from fbdl_fast.data.readers import file_columns

    columns = file_columns(data, column, errors=encoding_errors)
    return [DEFAULT_KEPT] if DEFAULT_KEPT in columns and column != DEFAULT_KEPT else []


def cmd_predict(args: argparse.Namespace) -> int:
    """`fbdl-fast predict`; an --output file another writer created meanwhile is a UsageError."""
    try:
        return _predict(args)
    except FileExistsError as err:
        if not args.output or Path(err.filename or "") != Path(args.output):
            raise
        raise UsageError(
            f"output file {args.output} was created by another writer while predicting; "
            "nothing was written: pass --overwrite to replace it or choose another --output"
        ) from None


def _check_kept(keep: Sequence[str], names: Sequence[str], multi_label: bool) -> None:
    """UsageError for a kept column named as one of the output's own: in a JSON line one of
    the two would be lost, in CSV the header would hold the name twice."""
    label_columns = ["labels", "label_probabilities"] if multi_label else ["label", "probability"]
    own = ["text", *label_columns, "probabilities", *(f"prob_{name}" for name in names)]
    taken = [name for name in keep if name in own]
    if taken:
        raise UsageError(
            f"--keep-columns {','.join(taken)}: the output has its own column of that name; "
            f"accepted: input columns other than {', '.join(own[:4])} and prob_<class>"
        )


def _rounded_rows(chunk: Sequence[Prediction]) -> list[list[float]]:
    """Every class's probability of each prediction, to 6 decimals, for a chunk at once: numpy's
    rounding of 100,000 rows of 12 classes takes a tenth of the time of Python's round() per
    value. (It scales, rounds half to even and scales back, so a value within an ulp of a
    half-way point may round the other way from round(): a difference of 1e-6 at most.)"""
    import numpy as np

    values = [list(prediction.probabilities.values()) for prediction in chunk]
    return np.round(np.array(values, dtype=np.float64), 6).tolist()  # type: ignore[no-any-return]


def _write_prediction(
    write: Callable[[str, Any, Any, list[float], tuple[Any, ...]], None],
    prediction: Prediction,
    probs: list[float],
    kept: tuple[Any, ...],
) -> None:
    """One row: the label and its probability, or (multi-label) every label at or above its
    threshold and their probabilities; `probs`, every class's probability, already rounded."""
    if prediction.labels is not None:
        assert prediction.label_probabilities is not None
        labels, chosen = list(prediction.labels), _rounded(list(prediction.label_probabilities))
        write(prediction.text, labels, chosen, probs, kept)
        return
    write(prediction.text, prediction.label, _rounded(prediction.probability), probs, kept)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: a leading ' where it would start a formula."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def _prediction_writer(
    sink: IO[str], fmt: str, names: list[str], keep: Sequence[str] = (), multi_label: bool = False
) -> Callable[[str, Any, Any, list[float], tuple[Any, ...]], None]:
    """A function writing one prediction row to `sink` (JSON lines, or CSV after a header):
    the kept columns, the text, the label and its probability, then every class's probability.

    `keep` names input columns passed through; their values come first. Multi-label rows hold
    the labels at or above their threshold and their probabilities (JSON lists; in CSV joined
    by |) under "labels" and "label_probabilities". In CSV, text cells starting with = + - @
    (or a tab or carriage return) get a leading ' so that spreadsheets show them instead of
    running them as formulas; JSON lines hold the texts unchanged."""
    label_column, probability_column = (
        ("labels", "label_probabilities") if multi_label else ("label", "probability")
    )
    if fmt == "jsonl":
        encoder = json.JSONEncoder(ensure_ascii=False).encode

        def encode(value: Any) -> str:  # json's C escaping for a str, the encoder for the rest
            return _json_str(value) if type(value) is str else encoder(value)

        # A row's JSON joined from strings, the keys' made once: the text json.dumps(row,
        # ensure_ascii=False) writes, in half its time (float's repr is JSON's number but for
        # nan and inf, which take json.dumps).
        kept_keys = [f"{encode(name)}: " for name in keep]
        text_key, label_key, probability_key = (
            f"{encode(name)}: " for name in ("text", label_column, probability_column)
        )
        name_keys = [f"{encode(name)}: " for name in names]

        def write_jsonl(
            text: str, label: Any, probability: Any, probs: list[float], kept: tuple[Any, ...]
        ) -> None:
            if not math.isfinite(sum(probs)):  # a nan or an inf among them
                row = {
                    **dict(zip(keep, kept)),
                    "text": text,
                    label_column: label,
                    probability_column: probability,
                    "probabilities": dict(zip(names, probs)),
                }
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                return
            cells = [key + encode(value) for key, value in zip(kept_keys, kept)]
            cells += [text_key + encode(text), label_key + encode(label)]
            cells.append(probability_key + encode(probability))
            classes = ", ".join([key + repr(value) for key, value in zip(name_keys, probs)])
            sink.write("{" + ", ".join(cells) + ', "probabilities": {' + classes + "}}\n")

        return write_jsonl
    writer = csv.writer(sink, lineterminator="\n")
    header = [*keep, "text", label_column, probability_column, *[f"prob_{n}" for n in names]]
    writer.writerow([_csv_cell(cell) for cell in header])

    def write_csv(
        text: str, label: Any, probability: Any, probs: list[float], kept: tuple[Any, ...]
    ) -> None:
        cells = [*kept, text, _joined(label)]
        writer.writerow([*map(_csv_cell, cells), _joined(probability), *probs])

    return write_csv


def _rounded(value: Any) -> Any:
    """A probability, or each of a list of them, to 6 decimals."""
    return [round(v, 6) for v in value] if isinstance(value, list) else round(value, 6)


def _joined(value: Any) -> Any:
    """A multi-label row's list as one CSV cell, its items joined by |; other values as given."""
    return "|".join(map(str, value)) if isinstance(value, list) else value


def _output_format(out: Optional[Path]) -> str:
    if out is None:
        return "jsonl"
    suffix = out.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise UsageError(
        f"--output {out}: extension {suffix!r} is not supported; accepted: .csv, .jsonl, .ndjson"
    )


def add_parser(subparsers: Any) -> None:
    """Add `predict` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "predict",
        formatter_class=HelpFormatter,
        help="label new posts with a trained run",
        description="Predict a label and class probabilities for each post, in input order. "
        "Output: JSON lines on stdout, or --output FILE (.csv or .jsonl; it appears only once "
        "complete). "
        f"The file streams through in chunks of {PREDICT_CHUNK} posts, so memory does not "
        "grow with its size. Empty or whitespace-only posts are classified as empty posts; "
        "posts longer than the run's max length are truncated.",
    )
    add_run_options(
        p,
        "posts file (.csv, .tsv, .jsonl); a label column is not needed, and is not read",
        labelled=False,
    )
    p.add_argument(
        "--text", action="append", default=[], help="a post to classify (repeatable), or --data"
    )
    p.add_argument(
        "--output",
        default=None,
        help="write predictions here (.csv or .jsonl); in CSV a text starting with = + - or @ "
        "gets a leading ' so spreadsheets do not run it as a formula",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--keep-columns",
        default=None,
        metavar="COL[,COL...]",
        help=f"input columns of --data to copy into each prediction, before the text "
        f"(default: {DEFAULT_KEPT}, when the input has an {DEFAULT_KEPT} column; '' keeps none)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_predict)
