"""lookahead_cupy: in-place Lookahead on CuPy arrays, with a fused one-pass GPU sync.

The same contract as ``lookahead_numpy`` (both subclass the library-neutral
``lookahead_inplace.InPlaceLookahead``), on the GPU: the caller's arrays are
the fast weights θ and are updated in place; the optimizer holds the slow
weights φ (one copy of the parameters, one buffer per dtype) and the inner
optimizer's state, which the core's inner optimizers compute on CuPy through
array-api-compat. The sync is one fused kernel per dtype that reads θ and φ
once and writes both.

Importing this package needs neither CuPy nor a GPU; `skip_reason` says
whether they are there.

>>> import cupy, lookahead_core as lc
>>> from lookahead_cupy import Lookahead
>>> params = [cupy.zeros((3, 4)), cupy.zeros(4)]
>>> opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=5, alpha=0.5)
>>> opt.step([cupy.ones((3, 4)), cupy.ones(4)])
"""

from ._device import cuda_status, skip_reason
from ._flat import FlatParams, flatten
from ._kernels import SUPPORTED_DTYPES, reference_sync
from ._layout import flat_layout
from ._optimizer import Lookahead

__all__ = [
    "SUPPORTED_DTYPES",
    "FlatParams",
    "Lookahead",
    "cuda_status",
    "flat_layout",
    "flatten",
    "reference_sync",
    "skip_reason",
]
