"""How rsrs talks to remote inputs: retries and timeouts for COGs read through GDAL and for STAC API searches.

Object stores answer 503 under load, connections reset, and servers stall; a catalog-scale run meets all three.
:class:`HttpOptions` says how often to retry and how long to wait, once, in the job's ``network:`` section; it
becomes GDAL's ``GDAL_HTTP_*`` settings (:meth:`HttpOptions.gdal_env`) and a urllib3 ``Retry`` for pystac-client
(:meth:`HttpOptions.retry`).

GDAL settings apply per process: :func:`use_http_options` sets the options that every
:func:`rsrs.pipeline.scenes.open_raster` of this process uses (the client sets the job's before it opens scenes; a
task sets its job's on its worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from urllib3 import Retry

#: HTTP answers that mean "try again later" (GDAL retries the same ones).
RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class HttpOptions:
    """Retries of a failed remote request (an HTTP 429/500/502/503/504 answer, a reset connection, a timeout), the
    wait between retries (growing exponentially from ``retry_delay_s``) and the seconds after which a request that
    has not completed (a stalled server) is abandoned, then retried."""

    retries: int = 5
    retry_delay_s: float = 1.0
    timeout_s: float = 60.0

    def gdal_env(self) -> dict[str, str]:
        """GDAL configuration options for ``/vsicurl/`` and the cloud file systems."""
        return {
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": f"{self.retry_delay_s:g}",
            "GDAL_HTTP_TIMEOUT": f"{self.timeout_s:g}",
            "GDAL_HTTP_CONNECTTIMEOUT": f"{self.timeout_s:g}",
        }

    def retry(self) -> Retry:
        """A urllib3 ``Retry`` for STAC API requests: every method (a search POST only reads), the statuses above,
        resets and timeouts, a refused connection at most twice; exponential backoff; the last answer returned (not
        raised) when retries run out."""
        from urllib3 import Retry

        return Retry(
            total=self.retries,
            connect=min(self.retries, 2),  # a refused connection: a server restarting, or more likely a wrong URL
            backoff_factor=self.retry_delay_s,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,
            raise_on_status=False,
            respect_retry_after_header=True,
        )


DEFAULT_HTTP = HttpOptions()
_CURRENT = DEFAULT_HTTP


def use_http_options(options: HttpOptions) -> None:
    """Make ``options`` the ones this process's GDAL opens use."""
    global _CURRENT
    _CURRENT = options


def http_options() -> HttpOptions:
    """The options this process's GDAL opens use."""
    return _CURRENT
