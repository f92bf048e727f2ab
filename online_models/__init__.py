"""online_models: the recommender, its training, the online learner, registry and drift."""
