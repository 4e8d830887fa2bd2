"""Writing files so that readers never see half of one: a temporary sibling, then one rename.

Every output a user or a resuming run opens (GeoParquet, run.json, checkpoints, reports, tile markers) is
written through :func:`atomic_path`. A failure (a full disk, a read-only mount) leaves the old file, or none,
under the final name, and becomes one :class:`~rsrs.core.errors.OutputError` line naming the path.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rsrs.core.errors import OutputError

_ADVICE = {
    errno.ENOSPC: "the disk is full; free space and rerun",
    errno.EDQUOT: "the disk quota is exceeded; free space and rerun",
    errno.EROFS: "the location is read-only; choose a writable output folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
}


def output_error(path: Path, err: OSError) -> OutputError:
    """One line saying which output could not be written, why, and what to do."""
    advice = _ADVICE.get(err.errno or 0, "check the output folder")
    return OutputError(f"cannot write {path}: {err.strerror or err} ({advice})")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one rename.

    An OSError inside the block or in the rename becomes :class:`OutputError`; the temporary file never stays.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise output_error(path, err) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only or vanished folder: nothing was left there to remove
            pass


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
