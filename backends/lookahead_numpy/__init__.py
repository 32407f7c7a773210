"""lookahead_numpy: in-place Lookahead on NumPy arrays.

The caller's arrays are the fast weights θ and are updated in place; the
optimizer holds the slow weights φ (one copy of the parameters) and the inner
optimizer's state. Trajectories are bit-identical to the functional
specification `lookahead_core.lookahead`.

>>> import numpy as np, lookahead_core as lc
>>> from lookahead_numpy import Lookahead
>>> params = [np.zeros((3, 4)), np.zeros(4)]
>>> opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=5, alpha=0.5)
>>> opt.step([np.ones((3, 4)), np.ones(4)])
"""

from ._optimizer import Lookahead

__all__ = ["Lookahead"]
