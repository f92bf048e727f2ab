"""The online learner: micro-batch head steps, published as versions, offsets kept exactly."""
