"""How a model runs: the backend contract and its implementations (the bottom layer).

Also home of what every layer shares: the model-config schema, data types, tensors and errors
(``backends.common``)."""
