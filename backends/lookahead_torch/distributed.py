"""Checkpoints of `lookahead_torch.Lookahead` through ``torch.distributed.checkpoint`` (DCP).

``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` and
``set_optimizer_state_dict`` turn an optimizer's state dict into one keyed by
parameter names (FQNs), with DTensor (sharded) tensors under FSDP2, that
``torch.distributed.checkpoint.save`` / ``load`` write and read in parallel and
reshard to another world size. They keep only the ``state`` and
``param_groups`` of a state dict, so Lookahead's ``"lookahead"`` section (the
default k and α, the pullback mode, the rollback counter) would be lost, and
`Lookahead.load_state_dict` refuses a checkpoint whose slow weights come
without it. The two functions here are those of torch with the section carried
through; everything else (options, FQNs, resharding, full state dicts) is
torch's.

```python
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from lookahead_torch.distributed import get_optimizer_state_dict, set_optimizer_state_dict

state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
dcp.save(state, checkpoint_id=path)

# resume: build model, fully_shard, inner optimizer and Lookahead as before, then
state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
dcp.load(state, checkpoint_id=path)          # fills the template in place
set_model_state_dict(model, state["model"])
set_optimizer_state_dict(model, opt, state["optim"])
```

Slow weights of DTensor parameters are DTensors sharded like them, so DCP
saves each rank's shard and reshards on load, like the inner optimizer's
moments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._optimizer import Lookahead

__all__ = ["get_optimizer_state_dict", "set_optimizer_state_dict"]

_SECTION = "lookahead"


def _check_arguments(optimizer: Any, options: Any) -> None:
    if not isinstance(optimizer, Lookahead):
        raise TypeError(
            f"optimizer must be a lookahead_torch.Lookahead, got {type(optimizer).__name__}; "
            "for other optimizers use torch.distributed.checkpoint.state_dict directly"
        )
    if options is not None and getattr(options, "flatten_optimizer_state_dict", False):
        raise ValueError(
            "options.flatten_optimizer_state_dict must be False: torch rebuilds a flattened "
            "optimizer state from the inner optimizer's state keys, which do not include "
            "Lookahead's slow weights"
        )


def get_optimizer_state_dict(
    model: torch.nn.Module, optimizer: Lookahead, *, options: Any = None
) -> dict[str, Any]:
    """``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` for a `Lookahead`.

    The state dict torch returns (keyed by parameter name; DTensors stay
    sharded unless ``options.full_state_dict``), with Lookahead's
    ``"lookahead"`` section added: ``{"state", "param_groups", "lookahead"}``.
    Each parameter's entry holds ``"lookahead_slow"`` (and
    ``"lookahead_momentum"`` with ``pullback="pullback"``) next to the inner
    optimizer's state; each group holds ``lookahead_k``,
    ``lookahead_alpha`` and ``lookahead_count``.

    Use it for saving and, on resume, as the template that
    ``torch.distributed.checkpoint.load`` fills. As torch does for any
    optimizer, an empty inner state is first initialized by a step with zero
    gradients and ``lr = 0``; Lookahead does not count that step.

    Args:
        model: the model whose parameters ``optimizer`` holds (DDP- or
            ``fully_shard``-wrapped, or plain).
        optimizer: the `Lookahead` around the inner optimizer.
        options: a ``torch.distributed.checkpoint.state_dict.StateDictOptions``,
            passed on (``flatten_optimizer_state_dict`` is not supported).

    Raises:
        TypeError: ``optimizer`` is not a `Lookahead`.
        ValueError: ``options.flatten_optimizer_state_dict`` is set.
    """
    _check_arguments(optimizer, options)
    from torch.distributed.checkpoint import state_dict as dcp_state_dict

    state_dict = dcp_state_dict.get_optimizer_state_dict(model, optimizer, options=options)
    state_dict[_SECTION] = optimizer._lookahead_section()
    return state_dict


def set_optimizer_state_dict(
    model: torch.nn.Module,
    optimizer: Lookahead,
    optim_state_dict: Mapping[str, Any],
    *,
    options: Any = None,
) -> None:
    """``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict`` for a `Lookahead`.

    Loads a state dict of `get_optimizer_state_dict` (typically filled by
    ``torch.distributed.checkpoint.load``): torch maps the parameter names
    back and, for a full state dict, shards the tensors; `Lookahead.load_state_dict`
    then checks everything and loads it all or nothing, as always.

    Args:
        model: the model whose parameters ``optimizer`` holds.
        optimizer: the `Lookahead` to load into.
        optim_state_dict: ``{"state", "param_groups", "lookahead"}`` as
            `get_optimizer_state_dict` returns it.
        options: a ``StateDictOptions``, passed on.

    Raises:
        TypeError: ``optimizer`` is not a `Lookahead`, or ``optim_state_dict``
            (or its ``"lookahead"`` section) is not a dict.
        ValueError: the ``"lookahead"`` section is missing (a state dict of
            torch's own ``get_optimizer_state_dict``), or anything
            `Lookahead.load_state_dict` refuses.
    """
    _check_arguments(optimizer, options)
    if not isinstance(optim_state_dict, Mapping):
        raise TypeError(f"optim_state_dict must be a dict, got {type(optim_state_dict).__name__}")
    if _SECTION not in optim_state_dict:
        raise ValueError(
            "optim_state_dict has no 'lookahead' section: save it with "
            "lookahead_torch.distributed.get_optimizer_state_dict (torch's own drops the section)"
        )
    section = optim_state_dict[_SECTION]
    if not isinstance(section, Mapping):
        raise TypeError(
            f"optim_state_dict['lookahead'] must be a dict, got {type(section).__name__}"
        )
    from torch.distributed.checkpoint import state_dict as dcp_state_dict

    def restore_section(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any] | None:
        # torch passes on only 'state' and 'param_groups'; put the section back.
        if _SECTION in state_dict:
            return None
        return {**state_dict, _SECTION: dict(section)}

    handle = optimizer.register_load_state_dict_pre_hook(restore_section, prepend=True)
    try:
        dcp_state_dict.set_optimizer_state_dict(
            model, optimizer, {key: value for key, value in optim_state_dict.items() if key != _SECTION},
            options=options,
        )
    finally:
        handle.remove()
