"""A label as a client sends it (JSON: a number, a string, or a list with one per row of the
prediction) checked against the prediction it is joined to, and turned into per-row errors."""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.common.errors import InvalidArgument
from server.monitoring.feedback.statistics import absolute_errors, label_class, misses

MAX_LABEL_CHARS = 1024  # a class name longer than this is no class of any model
# Per prediction kept: at most this many values (classes of its rows, or a regression's values).
# A larger one is not kept (the table's memory is bounded by the window times this).
MAX_VALUES = 64

Classes = tuple[int | str, ...]
Prediction = Classes | np.ndarray  # a classifier's class per row, or a regressor's (rows, values)


def _scalar(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidArgument("a classification label must be a class: a whole number or a string")
    if isinstance(value, str) and len(value) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"a classification label is at most {MAX_LABEL_CHARS} characters")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidArgument("a classification label must be a class: a whole number or a string")
    return label_class(value)


def classes_of(label: Any, rows: int) -> Classes:
    """One class per row: a scalar for a one-row prediction, else a list of ``rows`` classes."""
    if isinstance(label, list):
        if len(label) != rows:
            raise InvalidArgument(f"the prediction has {rows} row(s): send one label per row, not {len(label)}")
        return tuple(_scalar(v) for v in label)
    if rows != 1:
        raise InvalidArgument(f"the prediction has {rows} rows: send a list of {rows} labels")
    return (_scalar(label),)


def values_of(label: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A regression label as an array of the prediction's (rows, values) shape."""
    if isinstance(label, bool) or not isinstance(label, int | float | list):
        raise InvalidArgument("a regression label must be a number or a list of numbers")
    try:
        array = np.asarray(label, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument("a regression label must be a number or a (nested) list of numbers") from None
    if array.size != shape[0] * shape[1] or not np.isfinite(array).all():
        raise InvalidArgument(f"a regression label must hold {shape[0] * shape[1]} finite number(s)")
    return array.reshape(shape)


def errors_of(prediction: Prediction, label: Any, threshold: float) -> tuple[float, ...]:
    """The per-row errors of ``prediction`` against a client's JSON ``label`` (InvalidArgument
    when the label does not fit the prediction)."""
    if isinstance(prediction, tuple):
        return misses(prediction, classes_of(label, len(prediction)))
    return absolute_errors(prediction, values_of(label, prediction.shape), threshold)


def label_from_array(label: np.ndarray, regression: bool) -> Any:
    """A Clipper ``/update`` label (a float array, or one string) as a JSON-like label: a
    classifier's one-hot or score vector stands for its argmax."""
    flat = label.reshape(-1)
    if regression:
        return flat.astype(np.float64).tolist()
    if flat.dtype == object:
        return label_class(flat[0])
    return label_class(flat[0].item()) if flat.size == 1 else int(np.argmax(flat))
