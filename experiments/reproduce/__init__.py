"""Small-scale reproductions of the Lookahead paper's experiments on real offline data.

Zhang, Lucas, Hinton & Ba (2019) report CIFAR-10/100 accuracies (Table 1),
Penn Treebank LSTM perplexities (Table 3), robustness to k and α (Figure 9) and
the inner-loop/interpolation sawtooth (Figure 10). None of CIFAR, ImageNet or
Penn Treebank can be had offline here, so each experiment is an *analogue* on
data that ships inside pinned packages (see `experiments.reproduce.data`):

| name | analogue of | data, model |
|---|---|---|
| ``table1`` | Table 1 | digits and MNIST-5k, small CNN, 5 optimizers × 2 learning rates |
| ``table3`` | Table 3 | Wikipedia words and Shakespeare characters, 1-layer LSTM LM |
| ``figure9`` | Figure 9 | small CNN, LA(SGD) over a k × α grid |
| ``figure10`` | Figure 10 | small CNN, accuracy after each of 60 fast-weight updates |
| ``lr_sweep`` | the "higher learning rates" claim | small CNN, SGD vs LA(SGD) over learning rates |
| ``snoo`` | beyond the paper: SNOO, an outer Nesterov step | the Table 3 and Table 1 tasks, X vs LA(X) vs SNOO(X) (run by name only) |

Each has a ``quick`` size (run by the test suite), a ``full`` size (``make
reproduce``, about an hour on two idle CPU cores) and a ``reduced`` one (about
half of ``full``; the documented numbers). Run ``python -m experiments.reproduce --help``.
"""

from typing import Any

__all__ = ["EXPERIMENTS", "SIZES", "default_output", "run_experiment"]


def __getattr__(name: str) -> Any:
    """The runner's names, imported on first use (PEP 562): the runner imports torch, and
    the claim rules (`claims`) and the robustness driver (`robustness`) need none."""
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
