"""The server's core, with no transport in it: the DataPlane every transport calls
(``dataplane``), the one entry point that runs a model version for every caller
(``inference``), what a name is (``resolver``), validation against a model's config,
transport-neutral messages, the status mapping, the model repository manager, loaded model
versions and Triton's system shared memory."""
