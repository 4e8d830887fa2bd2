"""Replacing a module's ``forward`` on the instance, the way fast kernels are applied after construction.

STYLE rule 4: transformers' module classes are never forked or subclassed; a faster ``forward`` is bound to each
built instance instead, so its parameters, their names and any adapters stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import MethodType

from torch import nn


def bind_forward(modules: Iterable[nn.Module], forward: Callable) -> int:
    """Make ``forward`` (a function taking the module first) each module's ``forward``; returns how many."""
    modules = list(modules)
    for module in modules:
        module.forward = MethodType(forward, module)
    return len(modules)


def runs_forward(module: nn.Module, forward: Callable) -> bool:
    """Whether ``module``'s ``forward`` is ``forward`` bound to it by :func:`bind_forward`."""
    return getattr(getattr(module, "forward", None), "__func__", None) is forward
