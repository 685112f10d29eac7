"""One lock for the imports a backend does while it loads.

Instances load on threads of their own, several at once. Two threads importing the same package
for the first time (``import onnxruntime``, or unpickling an estimator, which imports
``sklearn.linear_model``...) can meet Python's import deadlock detection (``_DeadlockError``) in
packages whose modules import each other. Loads that import are serialized under this lock;
execution is not."""

from __future__ import annotations

import threading

IMPORT_LOCK = threading.RLock()
