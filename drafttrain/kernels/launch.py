"""Where a Triton kernel may run: on CUDA, or on CPU in Triton's interpreter; a clear error otherwise."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from drafttrain.errors import DrafttrainError


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 before it was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_installed() -> bool:
    """Looked up once: the model asks on every CUDA attention call."""
    return importlib.util.find_spec("triton") is not None


def check_launchable(kernel: str, *tensors: torch.Tensor) -> None:
    """Raise unless `kernel` can run on these tensors here: all on one CUDA device, or on CPU under
    the interpreter; and triton is installed."""
    if not triton_installed():
        raise DrafttrainError(f"{kernel} needs triton: `pip install triton` (CUDA builds of torch include it), "
                              "or use the plain torch path")
    devices = {tensor.device for tensor in tensors}
    if len(devices) != 1:
        raise DrafttrainError(f"{kernel}: tensors are on several devices ({sorted(map(str, devices))}); move them "
                              "to one CUDA device")
    device = devices.pop()
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return
    raise DrafttrainError(f"{kernel} runs on an NVIDIA GPU (CUDA); its tensors are on {device}. On a CPU use the "
                          "plain torch path (the reference), or set TRITON_INTERPRET=1 before importing triton to "
                          "run the kernel in Triton's interpreter for testing")


def kernels_enabled(device: torch.device) -> bool:
    """Whether the model uses the Triton kernels on `device`: on CUDA with triton installed, unless
    DRAFTTRAIN_KERNELS=0 (then the plain torch paths, the kernels' references, run instead)."""
    return (device.type == "cuda" and os.environ.get("DRAFTTRAIN_KERNELS", "1") != "0"
            and triton_installed())
