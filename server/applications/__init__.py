"""Clipper applications on the server: the registry and admin operations (``manager``), the
runs of linked models through the core's entry point, and where definitions and policy states
live across restarts (``state``). The run-time selection layer is ``schedulers.applications``."""
