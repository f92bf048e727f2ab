"""A gated full fine-tune: replay, train, judge against the serving model, promote or reject."""
