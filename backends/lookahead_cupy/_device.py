"""Finding CuPy and a CUDA device, lazily.

``import lookahead_cupy`` must work without CuPy and without a GPU, so nothing
here imports CuPy at module level. On a machine without an NVIDIA driver
``import cupy`` succeeds and the first CUDA call fails
(``cudaErrorInsufficientDriver``); a machine with a driver and no visible
device reports zero devices. Both mean "no CUDA device".
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple

__all__ = ["CudaStatus", "cuda_status", "require_cupy", "skip_reason"]

NO_CUPY = "cupy not installed"
NO_DEVICE = "no CUDA device"


class CudaStatus(NamedTuple):
    """What this process can use.

    Attributes:
        devices: number of CUDA devices CuPy sees (0 when none, or when CuPy is missing).
        reason: ``None`` when ``devices > 0``, else ``"cupy not installed"`` or
            ``"no CUDA device"``.
        detail: what CuPy said, for messages (empty when a device is there).
    """

    devices: int
    reason: str | None
    detail: str


def _import_cupy() -> ModuleType:
    import cupy  # noqa: PLC0415 - lazy on purpose: CuPy is optional

    return cupy


@functools.lru_cache(maxsize=1)
def cuda_status() -> CudaStatus:
    """Probe CuPy and the CUDA runtime once per process (the answer is cached)."""
    try:
        cupy = _import_cupy()
    except ImportError as exc:
        return CudaStatus(0, NO_CUPY, str(exc))
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - any failure of the query means no usable device
        # cudaErrorInsufficientDriver without a driver, cudaErrorNoDevice with one
        # and no GPU, a CUDADriverError or an OSError from a broken installation.
        return CudaStatus(0, NO_DEVICE, f"{type(exc).__name__}: {exc}")
    if count < 1:
        return CudaStatus(0, NO_DEVICE, "cupy.cuda.runtime.getDeviceCount() returned 0")
    return CudaStatus(count, None, "")


def skip_reason() -> str | None:
    """``None`` when CuPy and a CUDA device are usable, else ``"cupy not installed"``
    or ``"no CUDA device"``."""
    return cuda_status().reason


def require_cupy() -> ModuleType:
    """The ``cupy`` module, or an ``ImportError`` that says how to install it."""
    try:
        return _import_cupy()
    except ImportError as exc:
        raise ImportError(
            "lookahead_cupy needs CuPy: pip install 'lookahead-optimizer[cupy]' "
            f"(cupy-cuda12x) on a machine with an NVIDIA GPU ({exc})"
        ) from exc
