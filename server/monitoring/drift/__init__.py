"""Drift monitors: a version's traffic, sampled on the request path into a bounded buffer, is
compared off the request path with a reference (a file in the model folder, or the first sampled
rows) by the tests of ``statistics.py``."""
