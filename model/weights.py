"""Finding pretrained backbone weights on local disk, with one clear error when they are absent.

Lookup order for a reference such as ``google/siglip-so400m-patch14-384``: an existing path as given; the
weights directory (``weights_dir`` argument or ``RSRS_WEIGHTS_DIR``) joined with the reference; the Hugging
Face cache (``HF_HOME``), offline. Only when none holds it and ``HF_HUB_OFFLINE`` is not set is a download
attempted; any failure becomes :class:`WeightsNotFoundError` saying what to fetch and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

from rsrs.core.errors import WeightsNotFoundError

WEIGHTS_DIR_ENV = "RSRS_WEIGHTS_DIR"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def weights_dir(override: str | Path | None = None) -> Path | None:
    """The configured local weights directory, if any."""
    value = override or os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def resolve_pretrained(ref: str, *, what: str, weights_root: str | Path | None = None, download: bool = True) -> Path:
    """Local path holding the weights named by ``ref`` (a path, or a hub id), or raise WeightsNotFoundError.

    ``download=False`` looks only on local disk (e.g. for a quick check on a client that will not run the model).
    """
    as_given = Path(ref).expanduser()
    if as_given.exists():
        return as_given
    root = weights_dir(weights_root)
    if root is not None and (root / ref).exists():
        return root / ref
    if "/" in ref and not ref.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(ref, local_files_only=True))
        except Exception:  # noqa: BLE001 - any cache miss means: not available locally
            pass
        if download and not _offline():
            try:
                return Path(snapshot_download(ref))
            except Exception:  # noqa: BLE001 - network, auth or missing repo all end the same way
                pass
    target = (root or Path(f"${WEIGHTS_DIR_ENV}")) / ref
    raise WeightsNotFoundError(
        f"{what} weights '{ref}' not found locally; on a connected machine run "
        f"`hf download {ref} --local-dir {target}` (set {WEIGHTS_DIR_ENV} to that folder's root here), "
        f"or point the preset at a local directory"
    )
