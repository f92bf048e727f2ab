"""online_models/drift."""
