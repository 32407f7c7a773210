"""lookahead_inplace: the in-place Lookahead, written once for any strided array library.

For authors of in-place adapters, not for training code (use
``lookahead_numpy.Lookahead`` or ``lookahead_cupy.Lookahead``). An adapter
subclasses `InPlaceLookahead`, which owns what does not depend on the array
library (argument checks, the schedule through `lookahead_core.plan_step`, the
slow-weight swap context, the flat all-or-nothing checkpoint), and supplies the
array work through its hooks (see `lookahead_inplace.base`). The helpers below
need only an array's ``shape``, ``strides``, ``itemsize`` and an address the
adapter gives, so the NumPy and CuPy adapters share them.

Checkpoints are NumPy arrays whatever the library (``np.savez``-ready), so
this package imports NumPy; it does no array work with it.

Modules: `lookahead_inplace.base` (the class), `lookahead_inplace.checkpoint`
(flattening nested inner states to dotted keys and checking them on load),
`lookahead_inplace.memory` (memory order, overlap and sharing checks),
`lookahead_inplace.lerp` (the two-sided lerp's weights),
`lookahead_inplace.nonfinite` (``nonfinite="rollback"``'s argument and check),
`lookahead_inplace.outer` (which outer optimizers run in place, and their scalars).
"""

from .base import InPlaceLookahead
from .lerp import lerp_weights
from .memory import byte_extent, check_no_self_overlap, check_no_shared_memory, memory_order
from .nonfinite import NONFINITE_MODES, all_finite, check_nonfinite

__all__ = [
    "NONFINITE_MODES",
    "InPlaceLookahead",
    "all_finite",
    "byte_extent",
    "check_no_self_overlap",
    "check_no_shared_memory",
    "check_nonfinite",
    "lerp_weights",
    "memory_order",
]
