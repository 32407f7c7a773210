"""lookahead_torch: Lookahead as a ``torch.optim.Optimizer`` wrapping any torch optimizer.

The model's parameters are the fast weights θ; the wrapper holds the slow
weights φ (one copy of the parameters, taken at construction) and syncs after
every k-th executed inner step. A drop-in replacement for the optimizer in a
training loop, with LR schedulers, ``GradScaler``, closures, hooks and
checkpoints working as with the inner optimizer alone.

>>> import torch
>>> from lookahead_torch import Lookahead
>>> model = torch.nn.Linear(4, 2)
>>> opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=5, alpha=0.5)
>>> loss = model(torch.ones(3, 4)).square().mean()
>>> loss.backward()
>>> opt.step()
"""

__all__ = ["Lookahead"]

try:
    from ._optimizer import Lookahead
except ModuleNotFoundError as _missing:
    # The package imports without PyTorch so that its conformance backends
    # (lookahead_torch._conformance) can load and report "torch not installed".
    if _missing.name != "torch":
        raise
    _reason = _missing

    def __getattr__(name: str):
        if name == "Lookahead":
            raise ImportError(
                "lookahead_torch.Lookahead needs PyTorch: pip install 'lookahead-optimizer[torch]'"
            ) from _reason
        raise AttributeError(f"module 'lookahead_torch' has no attribute {name!r}")
