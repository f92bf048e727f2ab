"""Training and evaluation from recorded traffic, and the baselines the model is compared with."""
