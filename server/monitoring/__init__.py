"""Model monitoring below the core: drift monitors (``drift/``) and accuracy from feedback
(``feedback/``). The core's request path calls into it; it never imports ``server.core``."""
