"""online_models/model."""
