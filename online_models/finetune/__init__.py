"""online_models/finetune."""
