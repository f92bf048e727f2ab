"""online_models/registry."""
