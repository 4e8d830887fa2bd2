"""The one exception hierarchy of rsrs (rsrs.core.errors).

Every error a user can cause derives from :class:`RsrsError` and from the builtin it refines, so callers
may catch either. Messages say what went wrong, where, and what to do next; the CLI prints them as one line.
"""


class RsrsError(Exception):
    """Base of every error rsrs raises on purpose."""


class ConfigError(RsrsError, ValueError):
    """A job, model or training configuration is invalid."""


class WeightsNotFoundError(RsrsError, FileNotFoundError):
    """Pretrained backbone weights or a checkpoint could not be found locally."""


class CheckpointError(RsrsError, ValueError):
    """A checkpoint file exists but does not match the model it is applied to."""


class InputDataError(RsrsError, ValueError):
    """Input imagery, labels or catalog metadata cannot be used as given."""


class OutputError(RsrsError, OSError):
    """An output cannot be written where asked (an existing file, a read-only or full location)."""
