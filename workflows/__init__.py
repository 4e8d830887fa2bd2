"""rsrs.workflows: what a user runs (run, train, evaluate, synth), the job schema, the cluster, the CLI."""

from importlib import import_module

_EXPORTS = {"run_job": "rsrs.workflows.run"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rsrs.workflows' has no attribute {name!r}")
