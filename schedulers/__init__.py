"""When and with whom a request runs: model instances on their threads, the per-model queue and
batcher, and the statistics they keep."""
