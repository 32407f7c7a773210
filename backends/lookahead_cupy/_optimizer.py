"""The stateful, in-place Lookahead optimizer for CuPy arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import lookahead_core as lc
from lookahead_inplace import InPlaceLookahead, memory_order

from ._checks import check_kernel_mode, check_params
from ._device import require_cupy
from ._kernels import (
    CHUNK,
    COMPUTE_DTYPES,
    THREADS_PER_BLOCK,
    elementwise_swap_kernel,
    elementwise_sync_kernel,
    lerp_weights,
    multi_tensor_functions,
)
from ._layout import GroupPlan, TensorInfo, chunk_starts, plan_layout
from ._outer_kernels import outer_kernel, outer_scalar_values, outer_variant

__all__ = ["Lookahead"]


class _MultiTensor:
    """One multi-tensor launch over the dense segments of one dtype.

    The pointer and size tables are built once, here: the parameters are
    updated in place, so their addresses never change.
    """

    def __init__(self, cupy: Any, dtype: str, segments: list[tuple[Any, Any]]) -> None:
        sizes = [int(theta.size) for theta, _ in segments]
        first, blocks = chunk_starts(sizes, CHUNK)
        if blocks >= 2**31:
            raise ValueError(f"{sum(sizes)} {dtype} elements need more blocks than one launch has")
        self.blocks = blocks
        self.table = (
            cupy.asarray(np.array([theta.data.ptr for theta, _ in segments], dtype=np.uint64)),
            cupy.asarray(np.array([phi.data.ptr for _, phi in segments], dtype=np.uint64)),
            cupy.asarray(np.array(sizes, dtype=np.int64)),
            cupy.asarray(np.array(first, dtype=np.int32)),
            np.int32(len(segments)),
            np.int64(CHUNK),
        )
        self.sync_function, self.swap_function = multi_tensor_functions(dtype)


class _DtypeLaunches:
    """The kernel launches that sync (or swap) every parameter of one dtype."""

    def __init__(self, dtype: str, pairs: list[tuple[Any, Any]], multi: _MultiTensor | None):
        self._weight_type = np.dtype(COMPUTE_DTYPES[dtype]).type
        self._pairs = pairs  # (θ view, φ view): one ElementwiseKernel launch each
        self._multi = multi
        self._sync = elementwise_sync_kernel(dtype)
        self._swap = elementwise_swap_kernel(dtype)

    @property
    def launches(self) -> int:
        return len(self._pairs) + (self._multi is not None)

    def sync(self, factor: float, low: bool) -> None:
        # NumPy scalars of the kernels' exact C types: a Python float would let
        # CuPy pick the precision of the weight.
        weight = self._weight_type(factor)
        low_weight = np.int32(low)
        for theta, phi in self._pairs:
            self._sync(weight, low_weight, theta, phi)
        if self._multi is not None:
            multi = self._multi
            multi.sync_function(
                (multi.blocks,), (THREADS_PER_BLOCK,), multi.table + (weight, low_weight)
            )

    def swap(self) -> None:
        for theta, phi in self._pairs:
            self._swap(theta, phi)
        if self._multi is not None:
            multi = self._multi
            multi.swap_function((multi.blocks,), (THREADS_PER_BLOCK,), multi.table)


class Lookahead(InPlaceLookahead):
    """Lookahead (Zhang, Lucas, Hinton, Ba 2019, Algorithm 1) updating CuPy arrays in place.

    The same optimizer as ``lookahead_numpy.Lookahead``, on the GPU: the
    caller's arrays are the fast weights θ; each `step` applies the inner
    optimizer A in place (eq. 0.2), ``θ ← θ + A(L, θ, d)``, and every k-th
    executed step ends with the sync (eq. 0.1):

    ```text
    φ ← φ + α (θ − φ)      (two-sided lerp, exactly lookahead_core.lerp)
    θ ← φ                  (a copy: θ and φ never share memory)
    ```

    The sync is one fused kernel per dtype that reads θ and φ once and writes
    both: by default one multi-tensor launch covers every dense parameter of a
    dtype (views of one flat buffer, see `lookahead_cupy.flatten`, form a
    single contiguous segment of it). For float32 and float64
    the sync equals the core's `lookahead_core.lerp` bit for bit, subnormals
    included (CuPy's own float32 kernels flush them to zero; the sync's
    arithmetic is explicit PTX that does not); float16 is computed in float32
    and rounded once.

    The slow weights start as a copy of the parameters taken here (φ₀ = θ₀),
    in one buffer per dtype on the parameters' device. Everything runs on the
    current CuPy stream.

    Args:
        params: list or tuple of ``cupy.ndarray`` of dtype float16, float32 or
            float64, all on one device; no two may share memory. They are
            updated in place by `step` and `sync`; the optimizer keeps
            references to them.
        inner: the inner optimizer A, e.g. ``lookahead_core.sgd(lr=0.1,
            momentum=0.9)``; it runs on CuPy through array-api-compat.
        k: synchronization period, an ``int`` >= 1 (bool rejected).
        alpha: slow weights step size, a finite real in [0, 1]. In adaptive
            mode, the fallback α.
        alpha_mode: ``"fixed"`` (default, the paper) or ``"adaptive"``: each
            sync uses Proposition 1's α* (eq. 0.3) estimated from the gradients
            at θ_{t,0} and θ_{t,k}, clipped to ``[alpha_min, 1]``, exactly as
            `lookahead_core.lookahead` and `lookahead_numpy.Lookahead` do (a
            cycle takes k + 1 `step` calls; see the NumPy adapter). The two
            inner products are summed per parameter on the device and read
            back once each, two device-to-host copies per parameter per cycle.
            Costs one parameter-sized buffer (∇L(θ_{t,0})).
        alpha_min: lower end of the adaptive range, in [0, 1] (default 0.1).
        outer: ``None`` (default) or an outer optimizer O such as
            ``lookahead_core.sgd(lr=0.7, momentum=0.9, nesterov=True)``: each
            sync is O's step on Δ = φ − θ, as in `lookahead_numpy.Lookahead`
            (not with ``alpha`` nor adaptive mode). For the core's ``sgd``,
            ``adam`` and ``adamw`` it is one fused elementwise kernel launch
            per parameter that reads θ, φ and O's buffers once and writes
            them once, allocating nothing; the buffers (one parameter-sized
            array per parameter for SGD with momentum, two for Adam, three
            with amsgrad) are allocated here, on the parameters' device. Any
            other optimizer runs through its own ``update`` (which allocates).
        nonfinite: ``None`` (default, the paper) or ``"rollback"``: at a sync,
            if the parameters or the inner state hold inf or NaN, θ ← φ
            instead, the inner state restarts and `rollbacks` counts it, as in
            `lookahead_numpy.Lookahead`. The check runs at syncs only: two
            reductions per array (θ and every inner-state array) on the
            device and one device-to-host read of the verdict.
        kernel: how the dense parameters are synced: ``"auto"`` (the
            default, currently ``"multi_tensor"``), ``"multi_tensor"`` (one
            ``RawKernel`` launch per dtype over a table of pointers) or
            ``"elementwise"`` (one ``ElementwiseKernel`` launch per segment
            of back-to-back parameters, per parameter otherwise). Parameters
            that are not dense (strided views) always get an elementwise
            launch each.

    Raises:
        TypeError: an argument of the wrong type (message names it).
        ValueError: an argument of the right type and a wrong value.
        ImportError: CuPy is not installed.

    Example:
        >>> import cupy, lookahead_core as lc
        >>> from lookahead_cupy import Lookahead
        >>> params = [cupy.zeros(3)]
        >>> opt = Lookahead(params, lc.sgd(lr=1.0), k=3, alpha=0.5)
        >>> for _ in range(6):
        ...     opt.step([-cupy.ones(3)])
        >>> params[0]
        array([3., 3., 3.])
    """

    _library = "CuPy"

    def __init__(
        self,
        params: Sequence[Any],
        inner: lc.InnerOptimizer,
        k: int = 5,
        alpha: float = lc.DEFAULT_ALPHA,
        *,
        outer: lc.InnerOptimizer | None = None,
        alpha_mode: str = "fixed",
        alpha_min: float = 0.1,
        nonfinite: str | None = None,
        kernel: str = "auto",
    ) -> None:
        cupy = require_cupy()
        self._cupy = cupy
        self._array_type = cupy.ndarray
        self._launches: tuple[_DtypeLaunches, ...] = ()
        self._buffers: tuple[Any, ...] = ()
        self._kernel = "auto"
        first = params[0] if isinstance(params, (list, tuple)) and params else None
        # Allocations (inner state, slow buffers) go to the parameters' device.
        self._device: Any = (
            cupy.cuda.Device(first.device.id) if isinstance(first, cupy.ndarray)
            else contextlib.nullcontext()
        )
        with self._device:
            super().__init__(
                params, inner, k, alpha, outer=outer, alpha_mode=alpha_mode,
                alpha_min=alpha_min, nonfinite=nonfinite, kernel=kernel,
            )

    # -- attributes of this adapter ----------------------------------------------------

    @property
    def kernel(self) -> str:
        """The sync strategy asked for: ``"auto"``, ``"multi_tensor"`` or ``"elementwise"``."""
        return self._kernel

    @property
    def sync_launches(self) -> int:
        """Kernel launches per sync (and per swap), all dtypes together."""
        return sum(group.launches for group in self._launches)

    @property
    def slow_nbytes(self) -> int:
        """Bytes of the slow weights: exactly the parameters' bytes (one copy).

        The multi-tensor kernel's tables (32 bytes per parameter) are not included.
        """
        return sum(int(buffer.nbytes) for buffer in self._buffers)

    # -- the CuPy hooks of InPlaceLookahead ----------------------------------------------

    def _check_options(self, *, kernel: Any) -> dict[str, Any]:
        return {"kernel": check_kernel_mode(kernel)}

    def _check_params(self, params: Any) -> tuple[Any, ...]:
        return check_params(params)

    def _setup(self, params: tuple[Any, ...], *, kernel: str) -> tuple[Any, ...]:
        cupy = self._cupy
        self._kernel = kernel
        orders = [memory_order(p.strides) for p in params]
        works = [p.transpose(tuple(order)) for p, order in zip(params, orders)]
        infos = [
            TensorInfo(
                dtype=p.dtype.name,
                size=int(p.size),
                itemsize=int(p.itemsize),
                dense=bool(work.flags.c_contiguous),
                address=int(work.data.ptr),
                allocation=id(work.data.mem),
            )
            for p, work in zip(params, works)
        ]
        slow: list[Any] = [None] * len(params)
        buffers, launches = [], []
        for plan in plan_layout(infos):
            buffer = cupy.empty(plan.slow_size, dtype=plan.dtype)
            buffers.append(buffer)
            for i, offset in plan.slow_offsets.items():
                slow_work = buffer[offset : offset + works[i].size].reshape(works[i].shape)
                inverse = tuple(int(axis) for axis in np.argsort(orders[i]))
                slow[i] = slow_work.transpose(inverse)  # back to the parameter's axis order
            launches.append(self._plan_launches(plan, buffer, works, params, slow, kernel))
        self._buffers = tuple(buffers)
        self._launches = tuple(launches)
        return tuple(slow)

    def _plan_launches(
        self,
        plan: GroupPlan,
        buffer: Any,
        works: list[Any],
        params: tuple[Any, ...],
        slow: list[Any],
        kernel: str,
    ) -> _DtypeLaunches:
        cupy = self._cupy
        segments = []
        for segment in plan.segments:
            first = works[segment.members[0]]
            # A 1-D view of the segment's memory (first.data points at its lowest
            # byte: a dense array in memory order has no negative stride).
            theta = cupy.ndarray((segment.size,), dtype=first.dtype, memptr=first.data)
            phi = buffer[segment.slow_offset : segment.slow_offset + segment.size]
            phi[...] = theta  # φ₀ = θ₀
            segments.append((theta, phi))
        for i in plan.strided:
            slow[i][...] = params[i]
        pairs = [(params[i], slow[i]) for i in plan.strided]
        multi = None
        if segments and kernel != "elementwise":
            multi = _MultiTensor(cupy, plan.dtype, segments)
        else:
            pairs = segments + pairs
        return _DtypeLaunches(plan.dtype, pairs, multi)

    def _plain(self, param: Any) -> Any:
        return param

    def _apply(self, fast: tuple[Any, ...], delta: Sequence[Any]) -> None:
        add = self._cupy.add
        for param, change in zip(fast, delta):
            add(param, change, out=param)

    def _lerp_and_reset(self, alpha: float) -> None:
        factor, low = lerp_weights(alpha)
        with self._device:
            for group in self._launches:
                group.sync(factor, low)

    def _swap(self) -> None:
        with self._device:
            for group in self._launches:
                group.swap()

    def _outer_step(self, plan: Any, scalars: Any, buffers: tuple[tuple[Any, ...], ...]) -> None:
        # One fused launch per parameter; any strides (φ and O's buffers follow
        # the parameter's memory order, θ may be a strided view).
        variant = outer_variant(plan, scalars)
        values: dict[str, tuple[Any, ...]] = {}
        with self._device:
            for i, (theta, phi) in enumerate(zip(self._params, self._slow)):
                dtype = theta.dtype.name
                if dtype not in values:
                    values[dtype] = outer_scalar_values(dtype, scalars)
                outer_kernel(dtype, variant)(
                    *values[dtype], theta, phi, *(field[i] for field in buffers))

    def _public_views(self, arrays: Sequence[Any]) -> tuple[Any, ...]:
        # CuPy arrays cannot be made read-only: these views write through.
        return tuple(array.view() for array in arrays)

    def _export(self, array: Any) -> np.ndarray:
        return self._cupy.asnumpy(array)  # a fresh host copy

    def _stage(self, array: np.ndarray) -> Any:
        with self._device:
            return self._cupy.asarray(array)  # a fresh device copy

    def _assign(self, target: Any, staged: Any) -> None:
        with self._device:
            self._cupy.copyto(target, staged)

    def _read_mapping(self, state_dict: Any) -> dict[str, Any]:
        values = super()._read_mapping(state_dict)
        # CuPy arrays are accepted too, through host copies (checked like NumPy ones).
        ndarray = self._cupy.ndarray
        return {key: (value.get() if isinstance(value, ndarray) else value)
                for key, value in values.items()}

    # -- device-aware entry points -----------------------------------------------------

    def step(self, grads: Sequence[Any]) -> None:
        """One inner step in place (eq. 0.2), then the sync if it was the k-th.

        Runs on the parameters' device. See `lookahead_numpy.Lookahead.step`.

        Args:
            grads: one ``cupy.ndarray`` per parameter, with its shape and dtype.

        Raises:
            TypeError, ValueError: bad ``grads`` (nothing is changed).
            RuntimeError: called inside `slow_weights`.
        """
        with self._device:
            super().step(grads)

    def sync(self) -> None:
        """The outer update now, on the parameters' device. See `lookahead_numpy.Lookahead.sync`.

        Raises:
            RuntimeError: called inside `slow_weights`.
        """
        with self._device:
            super().sync()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint made by `state_dict`, all or nothing.

        Accepts what `state_dict` returns (NumPy arrays), what ``np.load``
        returns, and CuPy arrays. Every array is checked and copied to the
        device before anything changes. See
        `lookahead_numpy.Lookahead.load_state_dict`.

        Args:
            state_dict: a mapping such as ``opt.state_dict()`` or ``np.load(file)``.

        Raises:
            TypeError, ValueError: the checkpoint does not fit this optimizer.
            RuntimeError: called inside `slow_weights`.
        """
        with self._device:
            super().load_state_dict(state_dict)
