"""The model: the generator (the trainer imports it from here), its sub-pixel fast path, the model registry
and the bundled weights."""
