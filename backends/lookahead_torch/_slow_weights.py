"""Evaluation with the slow weights: the in-place swap and a model checkpoint of φ.

A mixin of `Lookahead`: it reads the optimizer's group states (``_slots``),
its structure and placement checks, and keeps the swap's bookkeeping in
``_swapped`` (``None`` outside `slow_weights`), which the optimizer's other
entry points consult through `_refuse_while_swapped`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from . import _distributed, _kernels

__all__ = ["SlowWeightsMixin"]


class SlowWeightsMixin:
    """``slow_weights()``, ``slow_state_dict()`` and the swap state they share."""

    _slots: list[Any]
    _swapped: tuple[list[torch.Tensor], list[torch.Tensor], list[Any]] | None

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Context manager: the parameters hold φ inside, θ again after.

        Same-dtype parameters exchange contents with their slow copies in place
        (three XORs of the bits: no third copy, exact both ways). With a
        ``slow_dtype`` copy the parameter receives φ rounded to its dtype and
        its fast values wait in a temporary of the parameter's size. The
        parameters stay the same tensor objects, so the inner optimizer's
        state (keyed by parameter) is untouched. On exit, also on an
        exception, the parameters get θ back bit for bit.

        Meant for evaluation: do not modify the parameters inside (for
        same-dtype copies such changes end up in φ; with ``slow_dtype`` they
        are discarded). `state_dict` works inside; `step`, `sync`,
        `load_state_dict`, `add_param_group` and nesting raise ``RuntimeError``.

        Yields:
            All parameters, group by group, now holding φ.
        """
        self._refuse_while_swapped("slow_weights")
        self._check_structure()
        self._check_placement(list(range(len(self._slots))))
        fast: list[torch.Tensor] = []
        slow: list[torch.Tensor] = []
        for state in self._slots:
            fast.extend(_distributed.local(p.detach()) for p in state.params)
            slow.extend(_distributed.locals_(state.slow))
        stashes = _kernels.swap_(fast, slow)
        self._swapped = (fast, slow, stashes)
        try:
            yield tuple(p for state in self._slots for p in state.params)
        finally:
            _kernels.unswap_(fast, slow, stashes)
            self._swapped = None

    def _current_slow(self) -> list[list[torch.Tensor]]:
        """φ per group: the slow buffers, or the parameters that hold φ inside `slow_weights`."""
        if self._swapped is None:
            return [list(state.slow) for state in self._slots]
        return [
            [p if s.dtype == p.dtype else s for p, s in zip(state.params, state.slow)]
            for state in self._slots
        ]

    def slow_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` with the slow weights φ in place of the parameters.

        A plain model checkpoint of the slow weights, e.g. to save or export
        the model Lookahead is averaging toward: ``torch.save(opt.slow_state_dict(model), f)``
        and later ``model.load_state_dict(torch.load(f))``. Each φ is cloned
        and cast to its parameter's dtype; buffers (batch-norm statistics) and
        parameters this optimizer does not hold are cloned as they are.

        Args:
            module: the ``torch.nn.Module`` whose parameters this optimizer holds.

        Raises:
            TypeError: ``module`` is not a ``torch.nn.Module``.
        """
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        slow_of = {
            id(p): s
            for state, current in zip(self._slots, self._current_slow())
            for p, s in zip(state.params, current)
        }
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, value in module.state_dict(keep_vars=True).items():
                phi = slow_of.get(id(value))
                if phi is None:
                    out[name] = value.detach().clone()
                else:
                    out[name] = phi.detach().to(dtype=value.dtype, copy=True)
        return out

    def _refuse_while_swapped(self, what: str) -> None:
        if self._swapped is not None:
            raise RuntimeError(
                f"{what}() cannot run inside slow_weights(): the parameters hold the slow "
                "weights there; leave the with-block first"
            )
