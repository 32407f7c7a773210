"""The stateful, in-place Lookahead optimizer for NumPy arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

import lookahead_core as lc

from lookahead_inplace import InPlaceLookahead
from lookahead_inplace.outer import buffer_fields

from . import blocks
from ._checks import check_block_bytes, check_params

__all__ = ["Lookahead"]


class Lookahead(InPlaceLookahead):
    """Lookahead (Zhang, Lucas, Hinton, Ba 2019, Algorithm 1) updating NumPy arrays in place.

    The caller's arrays are the fast weights θ. Each `step` applies the
    inner optimizer A in place (eq. 0.2):

    ```text
    θ ← θ + A(L, θ, d)
    ```

    and every k-th executed step ends with the sync, whose slow weights are the
    exponential moving average of eq. 0.1:

    ```text
    φ ← φ + α (θ − φ)      (two-sided lerp, exactly lookahead_core.lerp)
    θ ← φ                  (a copy: θ and φ never share memory)
    ```

    The slow weights start as a copy of the parameters taken here, at
    construction (φ₀ = θ₀). Results are bit-identical to the functional
    `lookahead_core.lookahead` on the same inputs.

    Args:
        params: list or tuple of writeable, real floating ``numpy.ndarray``; no
            two may share memory. They are updated in place by `step`
            and `sync`; the optimizer keeps references to them.
        inner: the inner optimizer A, e.g. ``lookahead_core.sgd(lr=0.1,
            momentum=0.9)`` or ``lookahead_core.adam(...)``.
        k: synchronization period, an ``int`` >= 1 (bool rejected).
        alpha: slow weights step size, a finite real in [0, 1]. ``alpha = 1``
            is the inner optimizer alone; ``alpha = 0`` resets θ to φ₀ every
            k steps. In adaptive mode, the fallback α.
        alpha_mode: ``"fixed"`` (default, the paper) or ``"adaptive"``: each
            sync uses Proposition 1's α* (eq. 0.3) estimated from the gradients
            at θ_{t,0} and θ_{t,k}, clipped to ``[alpha_min, 1]``, exactly as
            `lookahead_core.lookahead` does. A cycle then takes k + 1 `step`
            calls: k inner steps, then one whose gradient (at θ_{t,k}) only
            serves the estimate and the sync. Costs one parameter-sized buffer
            (∇L(θ_{t,0})) and one gradient evaluation per cycle. See the Theory page.
        alpha_min: lower end of the adaptive range, in [0, 1] (default 0.1).
        outer: ``None`` (default: the sync above) or an outer optimizer O,
            an `lookahead_core.InnerOptimizer` such as
            ``lookahead_core.sgd(lr=0.7, momentum=0.9, nesterov=True)`` (the
            SNOO/DiLoCo outer loop): each sync is then O's step on the
            pseudo-gradient Δ = φ − θ, ``φ ← φ + O.update(Δ, state, φ)``,
            ``θ ← φ``, exactly as `lookahead_core.lookahead(inner, k,
            outer=O)`. Not with ``alpha`` (``TypeError``) nor
            ``alpha_mode="adaptive"`` (``ValueError``). For the core's
            ``sgd``, ``adam`` and ``adamw`` the step runs in place in the
            sync's blocks and allocates nothing; their buffers (one
            parameter-sized array per parameter for SGD with momentum, two
            for Adam, three with amsgrad) are allocated here. Any other
            optimizer runs through its own ``update``, which allocates.
        nonfinite: ``None`` (default, the paper) or ``"rollback"``, as in the
            PyTorch adapter: at a sync (the k-th step, or `sync`), if the
            parameters or the inner state hold inf or NaN, the parameters are
            reset to the slow weights instead (θ ← φ; the sync is skipped, the
            inner state restarts from ``inner.init``, the cycle restarts and
            `rollbacks` counts it), so one blow-up loses at most k steps, not
            the run. Steps that do not sync do not look; a sync reads θ and
            the inner state once more (two reductions per array, no temporary).
        block_bytes: bytes per block of the sync and of the slow-weight swap
            (default 256 KiB). The scratch buffer, allocated here once per
            dtype, holds one block.

    Raises:
        TypeError: an argument of the wrong type (message names it).
        ValueError: an argument of the right type and a wrong value.

    Example:
        >>> import numpy as np, lookahead_core as lc
        >>> from lookahead_numpy import Lookahead
        >>> params = [np.zeros(3)]
        >>> opt = Lookahead(params, lc.sgd(lr=1.0), k=3, alpha=0.5)
        >>> for _ in range(6):
        ...     opt.step([-np.ones(3)])
        >>> params[0]
        array([3., 3., 3.])
    """

    _array_type: ClassVar[type] = np.ndarray
    _library: ClassVar[str] = "NumPy"

    def __init__(
        self,
        params: Sequence[np.ndarray],
        inner: lc.InnerOptimizer,
        k: int = 5,
        alpha: float = lc.DEFAULT_ALPHA,
        *,
        outer: lc.InnerOptimizer | None = None,
        alpha_mode: str = "fixed",
        alpha_min: float = 0.1,
        nonfinite: str | None = None,
        block_bytes: int = blocks.DEFAULT_BLOCK_BYTES,
    ) -> None:
        self._pairs: tuple[blocks.BlockPair, ...] = ()
        self._outer_works: tuple[tuple[np.ndarray, ...], ...] = ()
        super().__init__(
            params, inner, k, alpha, outer=outer, alpha_mode=alpha_mode, alpha_min=alpha_min,
            nonfinite=nonfinite, block_bytes=block_bytes,
        )

    # -- the NumPy hooks of InPlaceLookahead ---------------------------------------------

    def _check_options(self, *, block_bytes: Any) -> dict[str, Any]:
        return {"block_bytes": check_block_bytes(block_bytes)}

    def _check_params(self, params: Any) -> tuple[np.ndarray, ...]:
        return check_params(params)

    def _setup(self, params: tuple[np.ndarray, ...], *, block_bytes: int) -> tuple[np.ndarray, ...]:
        slow, self._pairs = blocks.make_pairs(params, block_bytes)
        return slow

    def _plain(self, param: np.ndarray) -> np.ndarray:
        return param.view(np.ndarray)  # subclass-free, same memory

    def _apply(self, fast: tuple[np.ndarray, ...], delta: Sequence[np.ndarray]) -> None:
        for param, change in zip(fast, delta):
            np.add(param, change, out=param)

    def _lerp_and_reset(self, alpha: float) -> None:
        # Blockwise through the preallocated scratch: allocates no array memory.
        # Looked up on the module at each call, so a test can count the kernel's calls.
        with blocks.overflow_checked():  # the floating-point mode once, not per parameter
            for pair in self._pairs:
                blocks.lerp_and_reset(pair, alpha)

    def _swap(self) -> None:
        for pair in self._pairs:
            blocks.swap(pair)

    def _setup_outer(self, state: Any) -> Any:
        if self._outer_plan is None:
            return state
        # The buffers, laid out like φ so that the blocks walk them together.
        fields = buffer_fields(self._outer_plan)
        columns: list[list[np.ndarray]] = [[] for _ in fields]
        works = []
        for i, (param, pair) in enumerate(zip(self._params, self._pairs)):
            kept, work = blocks.align_outer_buffers(
                param, pair, tuple(getattr(state, field)[i] for field in fields))
            for column, buffer in zip(columns, kept):
                column.append(buffer)
            works.append(work)
        self._outer_works = tuple(works)
        return state._replace(**{field: tuple(column) for field, column in zip(fields, columns)})

    def _outer_step(self, plan: Any, scalars: Any, buffers: Any) -> None:
        # The work views of `_setup_outer` view these buffers: they are updated in place.
        for pair, works in zip(self._pairs, self._outer_works):
            blocks.outer_step(pair, works, plan, scalars)

    def _public_views(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        views = []
        for array in arrays:
            view = array.view(np.ndarray)
            view.flags.writeable = False
            views.append(view)
        return tuple(views)

    def _export(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def _stage(self, array: np.ndarray) -> np.ndarray:
        return array  # already a NumPy array; _assign copies it into place

    def _assign(self, target: np.ndarray, staged: np.ndarray) -> None:
        np.copyto(target, staged)

