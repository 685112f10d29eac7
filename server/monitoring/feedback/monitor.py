"""One model version's feedback monitor: the predictions it served, by request id, in a bounded
insertion-ordered table (the oldest forgotten past ``feedback_window``), joined to the labels
clients send later; the rolling error over the last ``feedback_rolling`` labelled predictions
with its confidence interval; the change detector; the counters the exports read.

Everything runs on the event loop (the request path and the feedback route alike), so no lock.
A later label for the same id replaces the earlier one in the rolling error (its old errors are
taken out first: nothing counts twice) but is not fed to the change detector again: the
detector sees each prediction's first label only, so re-labelling one id over and over cannot
drive the alarm."""

from __future__ import annotations

import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from backends.common.errors import InvalidArgument, NotFound
from server.monitoring.feedback.config import FeedbackConfig
from server.monitoring.feedback.detector import ChangeDetector
from server.monitoring.feedback.labels import MAX_VALUES, Prediction, errors_of, label_from_array
from server.monitoring.feedback.statistics import Interval, classes_of, t_interval, wilson_interval

log = logging.getLogger(__name__)
MAX_ID_CHARS = 256  # a request id longer than this is not kept (the table's memory bound counts on it)


class FeedbackMonitor:
    def __init__(self, model: str, version: int, config: FeedbackConfig) -> None:
        self.model = model
        self.version = version
        self.config = config
        self.regression = config.kind == "regression"
        self._kept: OrderedDict[str, Prediction] = OrderedDict()
        self._labelled: set[str] = set()  # kept ids that have had a label (a later one replaces it)
        self._rolling: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._sum = self._squares = 0.0
        self._rows = 0
        self._rolled_out = 0
        self._interval: Interval | None = None  # cached until the next label
        self.detector = ChangeDetector(config)
        self.labels = self.joined = self.replaced = self.unmatched = self.invalid = 0
        self.not_kept = self.evicted = self.updates = 0

    # -- the request path ----------------------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        """An id for a request that came without one: unguessable, so that no other client can
        label the predictions it was given (128 random bits, as a uuid4's, in a fifth of its time)."""
        return secrets.token_hex(16)

    def served(self, request_id: str, outputs: Mapping[str, np.ndarray]) -> None:
        """Keeps the prediction of one answered request under its id (a reused id: the latest)."""
        prediction = self._prediction(outputs[self.config.output], self.config.batched)
        if prediction is None or len(request_id) > MAX_ID_CHARS:
            self.not_kept += 1
            return
        kept = self._kept
        if kept.pop(request_id, None) is not None:
            self._labelled.discard(request_id)  # a new prediction: its label is still to come
        kept[request_id] = prediction
        if len(kept) > self.config.window:
            self._labelled.discard(kept.popitem(last=False)[0])
            self.evicted += 1

    def _prediction(self, array: np.ndarray, batched: bool) -> Prediction | None:
        rows = array if batched else array[np.newaxis]
        if self.regression:
            if rows.size > MAX_VALUES or not len(rows):
                return None
            return rows.reshape(len(rows), -1).astype(np.float64)
        if len(rows) > MAX_VALUES or not rows.size:
            return None
        return classes_of(rows)

    # -- labels ---------------------------------------------------------------------------------

    def holds(self, request_id: str) -> bool:
        return request_id in self._kept

    def label(self, request_id: str, label: Any) -> dict[str, Any]:
        """Joins ``label`` to the prediction served under ``request_id``: NotFound when none is
        kept, InvalidArgument when the label does not fit it."""
        self.labels += 1
        prediction = self._kept.get(request_id)
        if prediction is None:
            self.unmatched += 1
            raise NotFound(
                f"model '{self.model}' version {self.version} keeps no prediction with id {request_id[:64]!r}: "
                f"never served, or older than its last {self.config.window} predictions"
            )
        errors = self._errors(prediction, label)
        first = request_id not in self._labelled
        self._labelled.add(request_id)
        replaced = self._roll(request_id, errors)
        if not first:
            self.replaced += 1
        self._joined(errors, first)
        return {
            "id": request_id,
            "model_version": str(self.version),
            "errors": list(errors),  # per row: 1.0 a miss, 0.0 a hit (regression: the absolute error)
            "replaced": replaced,  # an earlier label of this id left the rolling error
            "alarm": self.detector.alarm,
        }

    def join_row(self, row: np.ndarray, label: np.ndarray) -> None:
        """Joins a Clipper ``/update`` label to this version's answer ``row`` to the same input
        (an application's member): a label of its own, never a replacement."""
        self.labels += 1
        prediction = self._prediction(row, batched=False)
        if prediction is None:
            self.invalid += 1
            return
        try:
            errors = self._errors(prediction, label_from_array(label, self.regression))
        except InvalidArgument:
            return  # Clipper's /update learns from it all the same; only this join is skipped
        self.updates += 1
        self._roll(f"\0update {self.updates}", errors)  # a key no client id can take (ids are text)
        self._joined(errors, first=True)

    def _errors(self, prediction: Prediction, label: Any) -> tuple[float, ...]:
        try:
            return errors_of(prediction, label, self.config.threshold)
        except InvalidArgument:
            self.invalid += 1
            raise

    def _joined(self, errors: tuple[float, ...], first: bool) -> None:
        self.joined += 1
        self._interval = None
        if not first:
            return
        for error in errors:
            changed = self.detector.update(error)
            if changed is not None:
                self._log_change(changed)

    def _log_change(self, alarm: bool) -> None:
        ci = self.interval()
        log.log(
            logging.WARNING if alarm else logging.INFO,
            "feedback change alarm %s: model '%s' version %s, %s after %d labelled rows; "
            "rolling error %.4g [%.4g, %.4g]",
            "ON" if alarm else "off",
            self.model,
            self.version,
            self.detector.name,
            self.detector.seen,
            ci.estimate,
            ci.low,
            ci.high,
        )

    # -- the rolling error ----------------------------------------------------------------------

    def _roll(self, key: str, errors: tuple[float, ...]) -> bool:
        """Adds ``errors`` under ``key`` to the rolling window (replacing the key's earlier ones);
        whether it replaced any."""
        rolling = self._rolling
        old = rolling.pop(key, None)
        if old is not None:
            self._count(old, -1)
        rolling[key] = errors
        self._count(errors, 1)
        while len(rolling) > self.config.rolling:
            self._count(rolling.popitem(last=False)[1], -1)
            self._rolled_out += 1
            if self._rolled_out % self.config.rolling == 0:  # sums of floats drift: recount now and then
                self._recount()
        return old is not None

    def _count(self, errors: tuple[float, ...], sign: int) -> None:
        self._rows += sign * len(errors)
        self._sum += sign * math.fsum(errors)
        self._squares += sign * math.fsum(e * e for e in errors)

    def _recount(self) -> None:
        values = [e for errors in self._rolling.values() for e in errors]
        self._rows, self._sum, self._squares = len(values), math.fsum(values), math.fsum(e * e for e in values)

    def interval(self) -> Interval:
        """The rolling error with its confidence interval: Wilson's for misses (classification,
        or regression with a threshold), Student's t for a mean absolute error."""
        if self._interval is None:
            c = self.config
            if self.regression and c.threshold <= 0:
                self._interval = t_interval(self._sum, self._squares, self._rows, c.confidence)
            else:
                self._interval = wilson_interval(round(self._sum), self._rows, c.confidence)
        return self._interval

    # -- exports --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``feedback`` part of ``GET /v2/models/{m}/versions/{v}/monitoring``."""
        c, ci, d = self.config, self.interval(), self.detector
        return {
            "kind": c.kind,
            "output": c.output,
            "window": c.window,
            "kept": len(self._kept),
            "labels": self.labels,
            "joined": self.joined,
            "replaced": self.replaced,
            "unmatched": self.unmatched,
            "invalid": self.invalid,
            "not_kept": self.not_kept,
            "evicted": self.evicted,
            "error": {
                "metric": "mean_absolute_error" if self.regression and c.threshold <= 0 else "error_rate",
                "rows": self._rows,
                "rolling_window": c.rolling,
                "value": _finite(ci.estimate),
                "low": _finite(ci.low),
                "high": _finite(ci.high),
                "confidence": c.confidence,
            },
            "detector": {
                "name": d.name,
                "alarm": d.alarm,
                "changes": d.changes,  # alarm changes, either way
                "seen": d.seen,  # labelled rows fed to it (first labels only)
                "changed_at": d.changed_at,  # ``seen`` at the latest alarm change
            },
        }


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: an undefined bound is null."""
    return value if math.isfinite(value) else None
