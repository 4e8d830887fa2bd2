"""Scenes from STAC: static catalogs and item collections (pystac) or an API search (pystac-client).

Static sources are filtered client-side by collection, bbox and datetime; an API does the filtering
itself (and also takes ``query`` or a CQL2 ``filter``). Each item becomes one scene, from one multi-band
asset with band indexes, or from several single-band assets stacked in order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import pystac
import pystac_client
import requests
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO

from rsrs.core.errors import InputDataError
from rsrs.pipeline.network import DEFAULT_HTTP, HttpOptions
from rsrs.pipeline.scaling import DEFAULT_SCALING, ScalingSpec
from rsrs.pipeline.scenes import BandSource, Scene, default_bands, gdal_path, open_raster, scene_from_sources

#: Asset keys tried, in order, when an item has several image assets and none was named.
PREFERRED_ASSETS = ("visual", "image", "data", "rgb")
#: Items asked per page of an API search (servers may answer fewer): few round trips for a large catalog.
PAGE_SIZE = 100
#: How a request that got no HTTP answer ended (urllib3's words) -> what to say.
_DROPPED = {
    "timed out": "did not answer within {timeout:g} s",
    "Remote end closed connection": "closed the connection without answering",
    "reset by peer": "reset the connection",
}


class StacError(InputDataError):
    """A STAC source holds no usable items, or an item lacks the asset or band asked for."""


class StacApiError(InputDataError, ConnectionError):
    """A STAC API cannot be reached or answers with an error."""


def _is_url(href: str) -> bool:
    return urlparse(href).scheme in ("http", "https")


def read_static_items(href: str) -> list[pystac.Item]:
    """Every item of a static catalog, collection, ItemCollection/FeatureCollection or single item file."""
    if not _is_url(href) and not Path(href).exists():
        raise StacError(
            f"STAC file not found: {href}; check `stac.catalog` (relative paths in a job resolve "
            "against the job file's folder)"
        )
    try:
        data = pystac.StacIO.default().read_json(href)
        if data.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
            for item in items:  # no self link in a collection file: relative hrefs resolve against it
                if item.get_self_href() is None:
                    item.set_self_href(_absolute(href))
            return items
        stac_object = pystac.read_dict(data, href=_absolute(href))
    except (OSError, json.JSONDecodeError, pystac.STACError, pystac.STACTypeError, KeyError) as err:
        raise StacError(
            f"cannot read STAC file {href} ({err}); check that it is a STAC catalog, "
            "collection, item or FeatureCollection"
        ) from err
    if isinstance(stac_object, pystac.Item):
        return [stac_object]
    return list(stac_object.get_items(recursive=True))


def _absolute(href: str) -> str:
    return href if _is_url(href) else str(Path(href).resolve())


def _interval(text: str) -> tuple[datetime | None, datetime | None]:
    """A STAC datetime or ``start/end`` interval (``..`` open) as UTC bounds; a bare date spans its day."""
    parts = text.split("/")
    if len(parts) == 1:
        parts = [text, text]
    bounds: list[datetime | None] = []
    for i, part in enumerate(parts[:2]):
        part = part.strip()
        if part in ("", ".."):
            bounds.append(None)
            continue
        value = datetime.fromisoformat(part)
        if len(part) <= 10 and i == 1:  # a date as the end: include that whole day
            value = datetime.combine(value.date(), time.max)
        bounds.append(value if value.tzinfo else value.replace(tzinfo=UTC))
    return bounds[0], bounds[1]


def _item_interval(item: pystac.Item) -> tuple[datetime | None, datetime | None]:
    if item.datetime is not None:
        return item.datetime, item.datetime
    props = item.common_metadata
    return props.start_datetime, props.end_datetime


def _matches(item: pystac.Item, *, collections, bbox, interval) -> bool:
    if collections and item.collection_id not in collections:
        return False
    if bbox and item.bbox:
        x0, y0, x1, y1 = (
            item.bbox[0],
            item.bbox[1],
            item.bbox[-3 if len(item.bbox) == 6 else 2],
            item.bbox[-1],
        )
        if x1 < bbox[0] or x0 > bbox[2] or y1 < bbox[1] or y0 > bbox[3]:
            return False
    if interval:
        start, end = _item_interval(item)
        if (interval[1] and start and start > interval[1]) or (interval[0] and end and end < interval[0]):
            return False
    return True


def search_api(api: str, *, http: HttpOptions = DEFAULT_HTTP, **search: Any) -> list[pystac.Item]:
    """Items of an API search (collections, bbox, datetime, query or CQL2 filter, max_items), every page of it.

    Each request is retried as ``http`` says (HTTP 429/5xx, resets, timeouts); the final failure is one line.
    """
    try:
        stac_io = StacApiIO(max_retries=http.retry())
        client = pystac_client.Client.open(api, stac_io=stac_io, timeout=http.timeout_s)  # open sets the timeout
        if search.get("filter") is not None:  # say which CQL2 form it is, rather than have it converted
            search["filter_lang"] = "cql2-text" if isinstance(search["filter"], str) else "cql2-json"
        search = {k: v for k, v in search.items() if v is not None}
        return list(client.search(limit=min(PAGE_SIZE, search.get("max_items") or PAGE_SIZE), **search).items())
    except APIError as err:
        text = " ".join(str(err).split())
        tried = f"{http.retries} retries" if http.retries else "no retries"
        if getattr(err, "status_code", None) is None:  # no HTTP answer: refused, unknown host, timeout, hang-up
            dropped = next((said for cause, said in _DROPPED.items() if cause in text), None)
            if dropped is not None:
                said = dropped.format(timeout=http.timeout_s)
                raise StacApiError(
                    f"STAC API {api} {said} ({tried}); rerun later, or raise network.timeout_s / network.retries"
                ) from err
            errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
            reason = errno.group(1) if errno else "no answer"
            raise StacApiError(
                f"cannot reach STAC API {api} ({reason}); check the URL and that the server "
                "is up and reachable from here"
            ) from err
        raise StacApiError(
            f"STAC API {api} answered with HTTP {err.status_code} ({text[:200]}; {tried}); check the "
            "URL and the search parameters, or rerun later if the server is failing"
        ) from err
    except requests.RequestException as err:
        reason = type(err).__name__
        raise StacApiError(
            f"cannot reach STAC API {api} ({reason}); check the URL and that the server is up and reachable from here"
        ) from err
    except (pystac.STACError, json.JSONDecodeError) as err:
        raise StacApiError(
            f"STAC API {api} answered with something that is not STAC ({err}); check that the URL is the API's root"
        ) from err


def load_items(
    *,
    http: HttpOptions = DEFAULT_HTTP,
    catalog: str | None = None,
    api: str | None = None,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    query: dict | None = None,
    filter: dict | str | None = None,
    max_items: int | None = None,
) -> list[pystac.Item]:
    """Items from a static ``catalog`` file or an ``api`` search (``http``: its retries); :class:`StacError` when
    none match."""
    assert (catalog is None) != (api is None), "exactly one of catalog and api"
    if api is not None:
        items = search_api(
            api,
            http=http,
            collections=list(collections) if collections else None,
            bbox=list(bbox) if bbox else None,
            datetime=datetime,
            query=query,
            filter=filter,
            max_items=max_items,
        )
    else:
        if query or filter:
            raise StacError(
                f"`query`/`filter` need a STAC API; static catalog {catalog} is filtered only by "
                "collections, bbox and datetime"
            )
        interval = _interval(datetime) if datetime else None
        items = [
            item
            for item in read_static_items(catalog)
            if _matches(item, collections=collections, bbox=bbox, interval=interval)
        ][:max_items]
    if not items:
        where = f"STAC API {api}" if api else f"catalog {catalog}"
        criteria = ", ".join(
            f"{k}={v}" for k, v in dict(collections=collections, bbox=bbox, datetime=datetime).items() if v
        )
        raise StacError(
            f"no STAC items found in {where}{' for ' + criteria if criteria else ''}; widen the "
            "search or check the collection names"
        )
    return items


def _asset_href(item: pystac.Item, key: str) -> str:
    if key not in item.assets:
        raise StacError(f"item '{item.id}' has no asset '{key}'; available: {', '.join(item.assets) or 'none'}")
    href = item.assets[key].href
    self_href = item.get_self_href()
    if not _is_url(href) and not Path(href).is_absolute():  # relative: against the item's own location
        if self_href is None:
            raise StacError(
                f"item '{item.id}': asset '{key}' has a relative href ({href}) and the item no "
                "location to resolve it against; use absolute hrefs"
            )
        href = urljoin(self_href, href) if _is_url(self_href) else str((Path(self_href).parent / href).resolve())
    return gdal_path(href)


def _default_asset(item: pystac.Item) -> str:
    images = [
        key
        for key, asset in item.assets.items()
        if ("image" in (asset.media_type or "image") and "data" in (asset.roles or ["data"])) or key in PREFERRED_ASSETS
    ]
    for key in PREFERRED_ASSETS:
        if key in images:
            return key
    if len(images) == 1:
        return images[0]
    raise StacError(
        f"item '{item.id}' has several assets ({', '.join(item.assets)}); choose one with "
        "`asset:` or stack single-band ones with `assets: [r, g, b]`"
    )


def scene_from_item(
    item: pystac.Item,
    *,
    asset: str | None = None,
    assets: Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    scaling: ScalingSpec = DEFAULT_SCALING,
) -> Scene:
    """A scene from one item: one multi-band ``asset`` with ``bands``, or single-band ``assets`` stacked.

    With ``assets``, ``bands`` (optional) gives the band index inside each asset (default 1).
    """
    source = f"STAC item '{item.id}'"
    if assets:
        indexes = list(bands) if bands else [1] * len(assets)
        if len(indexes) != len(assets):
            raise StacError(
                f"item '{item.id}': {len(assets)} assets but {len(indexes)} bands; give one band "
                "per asset or leave `bands` out"
            )
        sources = [BandSource(_asset_href(item, key), int(b)) for key, b in zip(assets, indexes, strict=True)]
    else:
        href = _asset_href(item, asset or _default_asset(item))
        if bands is None:
            with open_raster(href) as dataset:
                bands = default_bands(dataset)
        sources = [BandSource(href, int(b)) for b in bands]
    scene = scene_from_sources(item.id, sources, scaling=scaling, source=source)
    return replace(scene, datetime=_item_datetime(item), item_href=item.get_self_href())


def _item_datetime(item: pystac.Item) -> str | None:
    """The item's datetime as ISO 8601, or ``start/end`` when it has only a range (``..`` for an open end)."""
    if item.datetime is not None:
        return item.datetime.isoformat()
    start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
    if start is None and end is None:
        return None
    return "/".join(t.isoformat() if t is not None else ".." for t in (start, end))
