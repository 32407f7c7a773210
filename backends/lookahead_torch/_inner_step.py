"""Calling the inner optimizer's ``step`` without paying torch's step wrapper twice.

Every ``torch.optim.Optimizer`` subclass has its ``step`` wrapped by
``Optimizer.profile_hook_step``: a ``record_function`` profiler range, the
global and per-instance step pre/post hooks, and ``_optimizer_step_code`` (an
entry point for the profiler's Python tracer). Lookahead is an optimizer
too, so a Lookahead step runs that wrapper once around itself and once more
around the inner step: on a step that does not sync, the second wrapper is
most of what Lookahead adds to the bare optimizer (~12 of ~20 µs, measured,
1 thread; the Performance page).

When nothing can observe the inner wrapper, `inner_step` calls the inner
optimizer's own ``step`` function directly. "Nothing" means all of:

- the class's ``step`` is torch's wrapper itself (recognised by its code
  object, so a user's own decorator around it is never skipped);
- no ``step`` attribute on the instance (an LR scheduler attached to the
  inner optimizer patches one there to notice the call);
- no step pre/post hook on the inner optimizer and no global one
  (``torch.optim.optimizer.register_optimizer_step_pre_hook``/``post_hook``);
- ``_optimizer_step_code`` not overridden;
- the autograd profiler off (``torch.autograd._profiler_enabled()``), so
  traces show ``Optimizer.step#<Inner>.step`` as before.

Otherwise it calls ``inner.step(...)``. The arithmetic is the same either
way: the body is the function the wrapper would call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer

__all__ = ["inner_step", "unobserved_step_body"]


def _wrapper_code() -> Any:
    """The code object of every function ``Optimizer.profile_hook_step`` returns."""

    def body(*args: Any, **kwargs: Any) -> None:
        return None

    wrap = getattr(torch.optim.Optimizer, "profile_hook_step", None)
    return None if wrap is None else getattr(wrap(body), "__code__", None)


_WRAPPER_CODE = _wrapper_code()
_BASE_STEP_CODE = getattr(torch.optim.Optimizer, "_optimizer_step_code", None)


def unobserved_step_body(inner: torch.optim.Optimizer) -> Callable[..., Any] | None:
    """The unwrapped ``step`` of ``inner`` if no hook, patch or profiler would see the wrapper, else ``None``."""
    step = getattr(type(inner), "step", None)
    if _WRAPPER_CODE is None or getattr(step, "__code__", None) is not _WRAPPER_CODE:
        return None
    if "step" in vars(inner):
        return None
    pre = getattr(inner, "_optimizer_step_pre_hooks", None)
    post = getattr(inner, "_optimizer_step_post_hooks", None)
    if pre is None or post is None or pre or post:
        return None
    global_pre = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
    global_post = getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)
    if global_pre is None or global_post is None or global_pre or global_post:
        return None
    if getattr(type(inner), "_optimizer_step_code", None) is not _BASE_STEP_CODE:
        return None
    if torch.autograd._profiler_enabled():
        return None
    return getattr(step, "__wrapped__", None)


def inner_step(inner: torch.optim.Optimizer, closure: Callable[[], Any] | None) -> Any:
    """``inner.step(closure)``, skipping torch's step wrapper when nothing would observe it."""
    body = unobserved_step_body(inner)
    if body is None:
        return inner.step() if closure is None else inner.step(closure)
    return body(inner) if closure is None else body(inner, closure)
