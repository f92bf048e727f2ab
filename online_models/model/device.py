"""Where model tensors live: the one place a device name becomes a ``torch.device``.

Every model path (the online learner, ``train()`` and the fine-tune, evaluation, the
serving scorer, the benchmarks) picks its device here from a setting, so ``auto``, ``cpu``
and ``cuda[:n]`` mean the same everywhere.
"""

from __future__ import annotations

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda")


def pick_device(name: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; ``cuda`` without a GPU is an error.

    Failing here, at start-up, beats a "tensors on different devices" error mid-stream.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type not in DEVICE_NAMES:
        raise ValueError(f"unsupported device {name!r} (auto | cpu | cuda[:n])")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): for timing, never in a step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
