"""Versioned model weights: snapshots and deltas as safetensors, metadata in Redis."""
