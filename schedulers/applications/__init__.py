"""Clipper's applications at run time: an application's definition (``definition``), its
fan-out, deadline, combination and default output (``application``), and the selection
policies (``selection``)."""
