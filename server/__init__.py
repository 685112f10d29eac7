"""The outside world and the lifecycle: KServe v2 gRPC, the model repository manager, settings
and the ``clipperd`` command line."""

__version__ = "0.1.0"
