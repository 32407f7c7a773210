"""Helpers of the property tests: bit-exact snapshots, and the tallies they write.

``LOOKAHEAD_PROPERTY_RESULTS=file.json`` makes each property test module add
its section to that file ("corrupted checkpoints" from
``test_checkpoint_properties.py``, "bad inputs" from
``test_input_properties.py``), per adapter, keeping what the other module or
an earlier run of other adapters wrote: run the two modules in any order, in
one pytest run or in two. The Guarantees page quotes the file.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_VARIABLE = "LOOKAHEAD_PROPERTY_RESULTS"


def merge_tally(section: str, tally: Mapping[str, Counter]) -> None:
    """Add ``tally`` (adapter -> outcome -> count) under ``section`` of the results file, if set."""
    path = os.environ.get(RESULTS_VARIABLE)
    if not path or not tally:
        return
    file = Path(path)
    results = json.loads(file.read_text()) if file.is_file() and file.read_text().strip() else {}
    counts = results.setdefault(section, {})
    for adapter, outcomes in tally.items():
        counts[adapter] = dict(sorted(outcomes.items()))
    file.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def host(value: Any) -> Any:
    """``value`` with every array (NumPy, CuPy, torch) replaced by a NumPy copy; containers rebuilt."""
    if isinstance(value, (np.ndarray, np.generic)):
        return np.array(value, copy=True)
    module = type(value).__module__.partition(".")[0]
    if module == "torch" and hasattr(value, "detach"):
        return _torch_host(value.detach().cpu())
    if module == "cupy" and hasattr(value, "get"):
        return value.get()
    if isinstance(value, Mapping):
        return {key: host(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple state
        return type(value)(*(host(item) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(host(item) for item in value)
    return value


def _torch_host(tensor: Any) -> Any:
    """A torch tensor on the host as NumPy, exactly: sparse ones densified, bfloat16 as its bits."""
    import torch

    if tensor.layout != torch.strided:
        return ("sparse", str(tensor.layout), _torch_host(tensor.to_dense()))
    if tensor.dtype == torch.bfloat16:
        return ("bfloat16", tensor.view(torch.int16).numpy().copy())
    return tensor.numpy().copy()


def same(a: Any, b: Any) -> bool:
    """Bit-identical trees of `host` values: arrays by dtype, shape and bytes; NaN equals NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.ascontiguousarray(a).tobytes()
                == np.ascontiguousarray(b).tobytes())
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b)))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b
