"""Where models run: the ``device`` parameters (``auto``), accelerate's ``cpu=`` switch, autocast off for the VAE."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Autocast off on every device type where it is on: the frozen VAE runs in its own dtype, as diffusers runs it.

    Under CUDA autocast ``group_norm`` runs in float32 (CPU autocast has no such rule), so a bf16 VAE decode with
    gradient would save float32 norm outputs for backward: ~1.6x the activations of the same decode in bf16.
    """
    with contextlib.ExitStack() as stack:
        for kind in ("cpu", "cuda"):
            if torch.is_autocast_enabled(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def resolve_device(device: str, process_device: Any = None) -> str:
    """``auto``: this process's accelerate device when it is not the CPU, else cuda when available, else cpu."""
    if device != "auto":
        return device
    if process_device is not None and str(process_device) != "cpu":
        return str(process_device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def accelerate_cpu(device: str) -> bool:
    """The ``cpu=`` argument of accelerate's ``PartialState`` / ``Accelerator`` for a ``device`` setting.

    True when ``device`` is "cpu" or there is no CUDA: without ``cpu=True`` accelerate ignores
    ``WORLD_SIZE`` on a CPU-only machine, so every process of a multi-process (gloo) launch thinks it
    is alone and does all the work.
    """
    return device == "cpu" or not torch.cuda.is_available()
