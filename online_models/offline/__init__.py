"""online_models/offline."""
