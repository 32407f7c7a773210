"""The non-finite policy of the in-place adapters: ``nonfinite=None`` or ``"rollback"``.

The check it needs, `all_finite`, is written against the Array API, so the
NumPy and the CuPy adapter run the same code (on the host or on the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lookahead_core import NONFINITE_MODES, check_nonfinite  # the option, as every adapter checks it

__all__ = ["NONFINITE_MODES", "all_finite", "check_nonfinite"]

def all_finite(xp: Any, arrays: Sequence[Any]) -> bool:
    """Whether every element of every array is finite, with no parameter-sized temporary.

    A NaN anywhere makes an array's min and max NaN (NumPy's and CuPy's
    reductions propagate it), +inf is its max and −inf its min, so an array is
    finite exactly when both are. That is two reductions per array and one
    host read for all of them (one device synchronization on a GPU); empty
    arrays are skipped. On the host it takes the time ``isfinite(x).all()``
    takes, without its temporary of one byte per element (NumPy reduces a
    non-contiguous array through a 64 KiB buffer).

    Args:
        xp: the arrays' Array API namespace.
        arrays: arrays of one library and device, any real floating dtypes.
    """
    extremes = [xp.reshape(e, (1,)) for a in arrays if a.size for e in (xp.min(a), xp.max(a))]
    if not extremes:
        return True
    return bool(xp.all(xp.isfinite(xp.concat(extremes))))
