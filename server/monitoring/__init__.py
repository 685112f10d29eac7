"""Model monitoring: drift of a model's inputs and outputs (``drift/``) and accuracy from
feedback (``feedback/``). The core's request path hands samples down to it; it never imports
the core."""
