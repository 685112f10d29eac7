"""When and with whom a request runs. ``assembly.build_scheduler`` builds a model version's
scheduler from its config and its backend's declared capabilities: model instances on their
devices (``instance``: a thread, the event loop, or a worker process through
``process_backend``), one queue and dynamic batcher per device (``device_queue``) with its AIMD
cap (``aimd``), queue policies, response ordering, batch views; ensembles (``ensemble``); the
response cache (``cache``); statistics (``stats``); and Clipper's selection layer
(``applications``). Every scheduler implements ``protocol.Scheduler``."""
