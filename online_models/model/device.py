"""Where model tensors live: the one place a device name becomes a ``torch.device``.

Every model path (the online learner, ``train()`` and the fine-tune, evaluation, the
serving scorer, the benchmarks) picks its device here from a setting, so ``auto``, ``cpu``
and ``cuda[:n]`` mean the same everywhere.
"""

from __future__ import annotations

import numpy as np
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


def to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device``, without waiting for the device's queued work.

    On CPU it is the array's own memory (no copy); any other device gets a plain copy
    (``meta``, for the tests' dry runs of a step). On CUDA the values go through
    page-locked memory and are copied asynchronously: ``.to(device)`` from ordinary memory
    synchronises the stream (torch copies, then waits), so a learner step that moves a few
    dozen small index arrays would wait for the device to drain that many times. The
    page-locked staging copy is torch's cached host allocator's, held until the transfer
    is done, so the array may be reused or freed at once.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def selects_freely(device: torch.device) -> bool:
    """Whether a selection whose size depends on the data (``nonzero``, indexing by a mask)
    costs no more than its own work on ``device``: on CPU it does; on a GPU the host must
    wait for the queue to drain to learn the size, so code there keeps fixed shapes."""
    return device.type == "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): for timing, never in a step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
