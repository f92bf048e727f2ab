"""online_models/alerts."""
