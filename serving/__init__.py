"""serving: the HTTP service returning top-K items from the freshest weights."""
