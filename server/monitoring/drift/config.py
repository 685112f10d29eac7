"""A model's drift monitor, from its config's ``parameters`` (keys ``drift_*``, documented in
docs/monitoring.md): read and checked at load, so that a bad value, a missing reference file or
an unknown tensor fails the load with a message naming the key."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from backends.common.parameters import Parameters
from backends.proto import model_config_pb2 as mc

PREFIX = "drift_"
KEYS = frozenset(
    {
        "drift_sample_rate",
        "drift_reference",
        "drift_reference_rows",
        "drift_window",
        "drift_check_rows",
        "drift_interval_ms",
        "drift_alpha",
        "drift_psi_threshold",
        "drift_inputs",
        "drift_categorical",
        "drift_outputs",
        "drift_class_outputs",
        "drift_wide",
        "drift_projection_dims",
        "drift_max_categories",
        "drift_buffer",
        "drift_seed",
    }
)
MIN_ROWS = 100  # fewer rows than this in a reference or a window make no test worth its alarm


class Kind(Enum):
    NUMERIC = "numeric"  # per column: Kolmogorov-Smirnov and PSI
    WIDE = "wide"  # the whole tensor: MMD on a random projection
    CATEGORICAL = "categorical"  # per column: chi-squared on the category counts
    CLASS = "class"  # one class per row (argmax, or the value): chi-squared and PSI


@dataclass(frozen=True, slots=True)
class Monitored:
    """One tensor the monitor samples: where it comes from and how it is tested."""

    name: str
    output: bool
    kind: Kind
    width: int  # elements per row


@dataclass(frozen=True, slots=True)
class DriftConfig:
    tensors: tuple[Monitored, ...]
    sample_rate: float = 0.1
    reference_file: Path | None = None
    reference_rows: int = 2000
    window: int = 2000
    check_rows: int = 1000
    interval_ms: int = 1000
    alpha: float = 0.001
    psi_threshold: float = 0.25
    projection_dims: int = 32
    max_categories: int = 50
    buffer: int = 1024
    seed: int = 0
    batched: bool = True  # the tensors have a batch dimension (max_batch_size > 0)


def drift_config(config: mc.ModelConfig, model_dir: Path) -> DriftConfig | None:
    """The monitor ``config`` asks for, or None when it sets no ``drift_*`` key (or
    ``drift_sample_rate`` 0). Raises ConfigError for anything it cannot monitor."""
    p = Parameters.of(config)
    given = [key for key in p.values if key.startswith(PREFIX)]
    if not given:
        return None
    for key in given:
        if key not in KEYS:
            raise p.fail(key, f"is not a drift key (known: {', '.join(sorted(KEYS))})", key)
    rate = p.number("drift_sample_rate", 0.1, 0.0, 1.0)
    if rate == 0.0:
        return None
    window = p.integer("drift_window", 2000, MIN_ROWS, 1_000_000, "rows")
    return DriftConfig(
        tensors=_tensors(config, p),
        sample_rate=rate,
        reference_file=_reference_file(p, model_dir),
        reference_rows=p.integer("drift_reference_rows", 2000, MIN_ROWS, 1_000_000, "rows"),
        window=window,
        check_rows=p.integer("drift_check_rows", min(1000, window), 1, window, "rows"),
        interval_ms=p.integer("drift_interval_ms", 1000, 10, 3_600_000, "milliseconds"),
        alpha=p.number("drift_alpha", 0.001, 0.0, 0.5, open_low=True),
        psi_threshold=p.number("drift_psi_threshold", 0.25, 0.0, open_low=True),
        projection_dims=p.integer("drift_projection_dims", 32, 1, 1024),
        max_categories=p.integer("drift_max_categories", 50, 2, 10_000),
        buffer=p.integer("drift_buffer", 1024, 1, 1_000_000, "requests"),
        seed=p.integer("drift_seed", 0),
        batched=config.max_batch_size > 0,
    )


def _names(p: Parameters, key: str) -> list[str]:
    return [n.strip() for n in p.text(key).split(",") if n.strip()]


def _width(p: Parameters, key: str, tensor: mc.ModelInput | mc.ModelOutput) -> int:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise p.fail(key, f"'{tensor.name}' has a variable shape {dims}: only fixed shapes can be monitored")
    return math.prod(dims) if dims else 1


def _tensors(config: mc.ModelConfig, p: Parameters) -> tuple[Monitored, ...]:
    inputs = {t.name: t for t in config.input}
    outputs = {t.name: t for t in config.output}
    wide = p.integer("drift_wide", 64, 2, 1_000_000, "elements")
    categorical = _known(p, "drift_categorical", inputs)
    named = "drift_inputs" in p
    chosen = _known(p, "drift_inputs", inputs) if named else list(inputs)
    monitored = []
    for name in chosen:
        tensor = inputs[name]
        if not named and name not in categorical and any(d < 0 for d in tensor.dims):
            continue  # by default, the inputs of fixed shape
        if name in categorical:
            monitored.append(Monitored(name, False, Kind.CATEGORICAL, _width(p, "drift_categorical", tensor)))
        elif tensor.data_type in (mc.TYPE_STRING, mc.TYPE_BOOL):
            continue  # not numbers: monitored only when named categorical
        else:
            width = _width(p, "drift_inputs", tensor)
            monitored.append(Monitored(name, False, Kind.WIDE if width > wide else Kind.NUMERIC, width))
    for name in _known(p, "drift_outputs", outputs):
        width = _width(p, "drift_outputs", outputs[name])
        monitored.append(Monitored(name, True, Kind.WIDE if width > wide else Kind.NUMERIC, width))
    for name in _known(p, "drift_class_outputs", outputs):
        monitored.append(Monitored(name, True, Kind.CLASS, _width(p, "drift_class_outputs", outputs[name])))
    if not monitored:
        raise p.fail("drift_inputs", "leaves nothing to monitor (no numeric input, no drift_categorical or outputs)")
    return tuple(monitored)


def _known(p: Parameters, key: str, tensors: Mapping[str, object]) -> list[str]:
    names = _names(p, key)
    for name in names:
        if name not in tensors:
            raise p.fail(key, f"names '{name[:64]}', which is not one of the model's tensors ({', '.join(tensors)})")
    return names


def _reference_file(p: Parameters, model_dir: Path) -> Path | None:
    """The reference file, inside the model's folder (a path out of it is refused)."""
    name = p.text("drift_reference").strip()
    if not name:
        return None
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or relative.suffix not in (".npz", ".npy"):
        raise p.fail("drift_reference", "must be a .npz or .npy file inside the model's folder")
    path = model_dir / relative
    if not path.is_file():
        raise p.fail("drift_reference", "names no file in the model's folder")
    return path


def load_reference(config: DriftConfig, p: Parameters) -> dict[str, np.ndarray] | None:
    """The reference rows of each monitored tensor, read from the file (no pickles), shaped
    (rows, width); None when the reference is the first sampled rows."""
    path = config.reference_file
    if path is None:
        return None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy file: one tensor's
            if len(config.tensors) != 1:
                raise p.fail("drift_reference", "a .npy file holds one tensor: use a .npz keyed by tensor name")
            arrays = {config.tensors[0].name: loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise p.fail("drift_reference", f"cannot be read as numpy arrays without pickles ({error})"[:200]) from error
    return {t.name: _reference_rows(p, t, arrays) for t in config.tensors}


def _reference_rows(p: Parameters, tensor: Monitored, arrays: dict[str, np.ndarray]) -> np.ndarray:
    array = arrays.get(tensor.name)
    if array is None:
        raise p.fail("drift_reference", f"holds no array '{tensor.name}' (it holds {', '.join(arrays) or 'none'})")
    if array.ndim == 0 or array.size % max(tensor.width, 1) or array.shape[0] * tensor.width != array.size:
        raise p.fail("drift_reference", f"array '{tensor.name}' is not (rows, {tensor.width} elements)")
    rows = array.reshape(array.shape[0], tensor.width)
    if len(rows) < MIN_ROWS:
        raise p.fail("drift_reference", f"array '{tensor.name}' has {len(rows)} rows: at least {MIN_ROWS} are needed")
    if rows.dtype.kind == "U":
        rows = np.char.encode(rows, "utf-8")  # BYTES arrive as bytes
    return rows
