"""Writes drift_classifier/reference.npz: 2000 rows of the example's training inputs (standard
normal) and the model's scores on them. Run from this folder: python make_reference.py"""

from pathlib import Path

import numpy as np

rng = np.random.default_rng(19)
x = rng.standard_normal((2000, 8)).astype(np.float32)
logits = 2.0 * x[:, :4].astype(np.float64)
e = np.exp(logits - logits.max(axis=1, keepdims=True))
scores = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
np.savez_compressed(Path(__file__).with_name("drift_classifier") / "reference.npz", x=x, scores=scores)
