"""Whether a GPU counter can run here, answered without importing the counter itself (its
table code brings numpy, about 11 MB a process with no GPU never needs)."""

from __future__ import annotations

import ctypes
import sys


class GpuUnavailable(RuntimeError):
    """No usable GPU: cuda-python missing, no driver, no such device, or no compile."""


def unavailable_reason(device_id: int = 0) -> str | None:
    """Why the GPU counter cannot run here, or None if it can (cheap: compiles nothing)."""
    try:
        from cuda.core import Device
    except ImportError as exc:
        return (f"cuda-python is not installed ({exc}); install the extra: "
                "pip install 'ai-cost-gateway[gpu]'")
    try:
        devices = Device.get_all_devices()
    except Exception as exc:  # the driver's own error types vary by version
        return f"no CUDA driver: {type(exc).__name__}: {exc}"
    if device_id >= len(devices):
        return f"no CUDA device {device_id} ({len(devices)} found)"
    return None


def driver_reason(device_id: int = 0) -> str | None:
    """`unavailable_reason`, but first whether the driver library loads at all (Linux): on a
    machine without one, importing the CUDA bindings alone costs about 22 MB of memory."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            return f"no CUDA driver: libcuda.so.1 cannot be loaded ({exc})"
    return unavailable_reason(device_id)
