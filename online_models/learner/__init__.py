"""online_models/learner."""
