"""Bytes of optimizer state and bytes allocated during a call, per array library.

- State: `state_bytes` walks an object graph (attributes, dicts, sequences)
  and adds up the memory of every distinct array buffer it reaches (a torch
  storage, the owner of a NumPy view, a JAX array) except those it is told to
  skip (parameters, gradients). A wrapper's extra state is its total minus
  the total of the bare inner optimizer after the same number of steps.
- Allocation in a call: PyTorch's profiler with ``profile_memory=True`` (the
  sum of every operator's own allocations: CPU tensors only); NumPy through
  ``tracemalloc``, to which NumPy reports its data buffers (the peak over the
  baseline, so Python objects such as views count too, a few hundred bytes);
  JAX from the compiled function's memory analysis (temporaries plus outputs
  that do not reuse a donated input).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import tracemalloc
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["jax_call_bytes", "numpy_call_bytes", "profiler_markers_filtered", "state_bytes",
           "torch_call_bytes"]

_OPAQUE = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.ModuleType,
           type, str, bytes, int, float, bool, complex, type(None))


def _buffer(obj: Any) -> tuple[Any, int] | None:
    """``(key, nbytes)`` of the memory an array object uses, or None if it is no array."""
    if isinstance(obj, np.ndarray):
        owner = obj
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        return ("numpy", id(owner)), owner.nbytes
    module = type(obj).__module__
    if module.startswith("torch") and hasattr(obj, "untyped_storage"):
        storage = obj.untyped_storage()
        return ("torch", storage.data_ptr()), storage.nbytes()
    if module.startswith("jax") and hasattr(obj, "nbytes") and hasattr(obj, "block_until_ready"):
        return ("jax", id(obj)), int(obj.nbytes)
    return None


def _keys(objects: Iterable[Any]) -> set[Any]:
    keys = set()
    for obj in objects:
        found = _buffer(obj)
        if found is not None:
            keys.add(found[0])
    return keys


def state_bytes(root: Any, skip: Iterable[Any] = ()) -> int:
    """Bytes of the distinct array buffers reachable from ``root``, except those of ``skip``."""
    skipped = _keys(skip)
    counted: set[Any] = set()
    visited: set[int] = set()
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in visited or isinstance(obj, _OPAQUE):
            continue
        visited.add(id(obj))
        found = _buffer(obj)
        if found is not None:
            key, nbytes = found
            if key not in skipped and key not in counted:
                counted.add(key)
                total += nbytes
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return total


# What kineto (PyTorch's profiler library, C++) writes to stderr at every start and stop
# of a profile, e.g. "USDT:2026-01-02 10:11:12 123:123 SyncActivityProfilerHandler.cpp:52]
# profiler_start": markers for a USDT probe collector, not messages for a reader.
PROFILER_MARKER = re.compile(rb"^USDT:[^\n]*\] profiler_(?:start|stop)\s*$")


def without_profiler_markers(text: bytes) -> bytes:
    """``text`` less its kineto ``profiler_start`` / ``profiler_stop`` marker lines."""
    return b"".join(line for line in text.splitlines(keepends=True)
                    if not PROFILER_MARKER.match(line))


def _write_all(fd: int, data: bytes) -> None:
    while data:  # os.write may write part of a large buffer
        data = data[os.write(fd, data):]


@contextlib.contextmanager
def profiler_markers_filtered() -> Iterator[None]:
    """Within the block, stderr (file descriptor 2) reaches the terminal less kineto's markers.

    No KINETO_LOG_LEVEL silences the markers alone: their level (USDT, 5) lies above
    ERROR (4), so a threshold high enough to drop them drops the errors too. Instead the
    C++ writes are caught at the file descriptor, and every other line (an error, a
    warning, Python's own stderr) is written back when the block ends, even on an exception.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                caught.seek(0)
                _write_all(2, without_profiler_markers(caught.read()))
    finally:
        os.close(saved)


def torch_call_bytes(fn: Callable[[], object]) -> int:
    """Bytes the PyTorch operators inside ``fn()`` allocate (CPU), by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profiler_markers_filtered(), \
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(0, event.self_cpu_memory_usage) for event in prof.events())


def numpy_call_bytes(fn: Callable[[], object]) -> int:
    """Peak traced memory over the baseline during ``fn()`` (NumPy buffers and Python objects)."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - baseline)
    finally:
        tracemalloc.stop()


def jax_call_bytes(compiled: Any) -> int:
    """Temporaries plus non-aliased outputs of a compiled JAX function (``jit(f).lower(...).compile()``)."""
    analysis = compiled.memory_analysis()
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)
