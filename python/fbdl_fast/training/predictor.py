"""What predicts: the methods a loaded run (training.loading.Run) and an ensemble of runs
(training.ensemble.Ensemble) share, built on one `_probabilities(texts, batch_size)` each gives.

    for chunk in predictor.predict_chunks(texts):   # a list of Predictions a chunk
        ...

Texts are read `chunk` at a time, checked (a non-str is a TypeError naming its position),
turned into every class's probability, and made into Predictions in input order. Importing this
module loads no torch.
"""

from __future__ import annotations

import itertools
import os
import reprlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from fbdl_fast.config import as_integer
from fbdl_fast.training.results import MultiLabelEvaluation, Prediction, RunEvaluation

if TYPE_CHECKING:
    import torch

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap, Posts

PathLike = Union[str, "os.PathLike[str]"]

MAX_BATCH_SIZE = 1 << 24  # posts a batch or chunk: far past any memory, inside every index type
# Posts per prediction chunk: tokenised together (one encode_batch), bucketed by length,
# predicted, then handed on. Memory holds one chunk, whatever the number of texts.
PREDICT_CHUNK = 4096
DEFAULT_THRESHOLD = 0.5  # a multi-label class without a tuned threshold (training.multilabel)


class Predictor:
    """Predict and read labelled posts for whatever gives every class's probability.

    A subclass has `meta` (config.json's settings: the text and label columns), `config`
    (multi_label, batch_size), `label_map`, `thresholds` and `_probabilities`."""

    meta: dict[str, Any]
    config: ModelConfig
    label_map: LabelMap

    @property
    def thresholds(self) -> Optional[list[float]]:
        """Multi-label: the tuned per-class thresholds, None where none were tuned."""
        return None

    @property
    def names(self) -> list[str]:
        """The class names (labels as str), in class-id order."""
        return [str(label) for label in self.label_map.labels]

    def _probabilities(self, texts: Sequence[str], batch_size: Optional[int]) -> torch.Tensor:
        """Every class's probability, a (len(texts), classes) tensor in input order; texts not
        empty."""
        raise NotImplementedError

    def class_probabilities(
        self, texts: Sequence[str], batch_size: Optional[int] = None
    ) -> list[list[float]]:
        """Every class's probability for each of `texts`, in their order, in one pass (predict
        splits its input into chunks instead). texts: any iterable of str, checked as predict
        checks it."""
        posts = list(_iterate(texts, "class_probabilities"))
        if batch_size is not None:
            check_positive("batch_size", batch_size, MAX_BATCH_SIZE)
        _check_texts(posts, 0, "class_probabilities")
        return self._probabilities(posts, batch_size).tolist() if posts else []

    def predict(self, texts: Iterable[str], batch_size: Optional[int] = None) -> list[Prediction]:
        """A Prediction for each text, in input order.

            run.predict(["so happy today", "@support my order never arrived"])[1].label

        texts: any iterable of str (a post that is empty or only spaces is read as an empty
        post; one longer than the run's max length is truncated); an empty one gives [].
        TypeError naming the position of an item that is not a str. For inputs too large to
        hold their predictions in memory, `predict_iter`."""
        return list(self.predict_iter(texts, batch_size=batch_size))

    def predict_iter(
        self,
        texts: Iterable[str],
        *,
        batch_size: Optional[int] = None,
        chunk: int = PREDICT_CHUNK,
    ) -> Iterator[Prediction]:
        """The Predictions of `texts` one at a time, in input order, reading `chunk` texts ahead
        (at least one batch): memory holds one chunk, however many texts come.

            for p in run.predict_iter(line.rstrip("\\n") for line in open("posts.txt")):
                print(p.label)"""
        return itertools.chain.from_iterable(
            self.predict_chunks(texts, batch_size=batch_size, chunk=chunk)
        )

    def predict_chunks(
        self,
        texts: Iterable[str],
        *,
        batch_size: Optional[int] = None,
        chunk: int = PREDICT_CHUNK,
    ) -> Iterator[list[Prediction]]:
        """`predict_iter`'s Predictions, a chunk's list at a time (what `fbdl-fast predict`
        writes and counts between progress updates)."""
        posts = _iterate(texts, "predict")
        if batch_size is not None:
            check_positive("batch_size", batch_size, MAX_BATCH_SIZE)
        size = max(
            check_positive("chunk", chunk, MAX_BATCH_SIZE), batch_size or self.config.batch_size
        )
        thresholds = self.thresholds or [DEFAULT_THRESHOLD] * len(self.label_map)
        names, start = self.names, 0
        while block := list(itertools.islice(posts, size)):
            _check_texts(block, start, "predict")
            probs = self._probabilities(block, batch_size)
            # argmax a chunk at once (the first of equal maxima, as max() would take)
            rows, tops = probs.tolist(), probs.argmax(dim=1).tolist()
            yield [self._prediction(*row, names, thresholds) for row in zip(block, rows, tops)]
            start += len(block)

    def _prediction(
        self,
        text: str,
        probs: list[float],
        best: int,
        names: list[str],
        thresholds: Sequence[float],
    ) -> Prediction:
        probabilities = dict(zip(names, probs))
        top = self.label_map.decode(best)
        if not self.config.multi_label:
            return Prediction(text, top, probs[best], probabilities)
        chosen = [i for i, p in enumerate(probs) if p >= thresholds[i]]
        return Prediction(
            text,
            top,
            probs[best],
            probabilities,
            tuple(self.label_map.decode(i) for i in chosen),
            tuple(probs[i] for i in chosen),
        )

    def evaluate(
        self,
        data: Union[PathLike, Posts],
        *,
        batch_size: Optional[int] = None,
        text_column: Optional[str] = None,
        label_column: Optional[str] = None,
        encoding_errors: str = "strict",
        progress_every: Optional[float] = None,
    ) -> Union[RunEvaluation, MultiLabelEvaluation]:
        """The figures on labelled posts: a RunEvaluation (loss, accuracy, macro-F1, ECE and the
        per-class details), or for a multi-label run a MultiLabelEvaluation (loss, subset
        accuracy, micro/macro-F1, Hamming loss at its thresholds). `.to_dict()` is `fbdl-fast
        evaluate --json`'s object.

            run.evaluate("test.csv").to_dict()["macro_f1"]

        data: a CSV, TSV or JSON-lines file (read with the run's text and label columns unless
        text_column / label_column say otherwise; encoding_errors as in
        fbdl_fast.data.load_posts), or labelled Posts. ValueError naming the label and its
        line for a label never seen in training. progress_every: log a progress line every so
        many seconds (logger "fbdl_fast"); None: none."""
        posts, source = self._labelled_posts(data, text_column, label_column, encoding_errors)
        return self._evaluate_posts(posts, source, batch_size, progress_every)

    def _evaluate_posts(
        self, posts: Posts, source: str, batch_size: Optional[int], progress_every: Optional[float]
    ) -> Union[RunEvaluation, MultiLabelEvaluation]:
        """evaluate's figures on `posts` (named `source`)."""
        raise NotImplementedError

    def _labelled_posts(
        self,
        data: Union[PathLike, Posts],
        text_column: Optional[str],
        label_column: Optional[str],
        encoding_errors: str,
    ) -> tuple[Posts, str]:
        """(the posts of `data`, how to name them): a file read with the run's columns."""
        from fbdl_fast.data import Posts, load_posts

        if isinstance(data, Posts):
            return data, data.source
        if not isinstance(data, (str, os.PathLike)):
            raise TypeError(
                f"evaluate: data is a {type(data).__name__}; accepted: the path of a posts file "
                "(.csv, .tsv, .jsonl) or fbdl_fast.data.Posts"
            )
        settings = self.meta.get("data", {})
        posts = load_posts(
            data,
            text_column or settings.get("text_column", "text"),
            label_column or settings.get("label_column", "label"),
            errors=encoding_errors,
            label_separator=settings.get("label_separator"),  # multi-label runs
        )
        return posts, str(data)


def check_positive(name: str, value: Any, most: Optional[int] = None) -> int:
    """`value` as an int (numpy's integers too) when it is an integer in [1, most]; else
    ValueError naming `name`."""
    number = as_integer(value)
    if number is None or number < 1:
        raise ValueError(f"{name}={value!r} is not accepted; expected an integer >= 1")
    if most is not None and number > most:
        raise ValueError(f"{name}={value!r} is not accepted; expected an integer in [1, {most}]")
    return number


def _iterate(texts: Any, method: str) -> Iterator[Any]:
    """An iterator over `texts`; TypeError for one str or bytes (a post, not posts) or for
    what is not iterable, naming `method`."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"texts is one {type(texts).__name__} ({reprlib.repr(texts)}); {method} takes an "
            "iterable of str: pass [text] for a single post"
        )
    try:
        return iter(texts)
    except TypeError:
        raise TypeError(
            f"texts is a {type(texts).__name__}, not an iterable; {method} takes an iterable of str"
        ) from None


def _check_texts(block: list[Any], start: int, method: str) -> None:
    """TypeError naming the first item of `block` (at input position start + i) not a str."""
    for i, text in enumerate(block):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{start + i}] is {reprlib.repr(text)} ({type(text).__name__}); {method} "
                "takes an iterable of str"
            )
