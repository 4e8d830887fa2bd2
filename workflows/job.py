"""The job file of ``rsrs run``: a pydantic schema for every key, and loading with one-line errors.

Unknown keys are errors that name the key and the nearest valid one; relative paths resolve against the
job file's folder, so a job runs the same from any working directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from rsrs.core.errors import ConfigError
from rsrs.core.schema import StrictModel, load_yaml_mapping, resolve_path, validate

if TYPE_CHECKING:  # the job schema loads without numpy, GDAL or pyproj: its errors answer at once
    from rsrs.pipeline.network import HttpOptions
    from rsrs.pipeline.scaling import ScalingSpec

#: The model used when a job names none.
DEFAULT_PRESET = "rsrefseg-b"


class _Strict(StrictModel):
    """Base of every job section: unknown keys are errors, and a validated job does not change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


BandList = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=3)]


def _check_band_count(bands: list[int] | None) -> list[int] | None:
    if bands is not None and len(bands) not in (1, 3):
        raise ValueError(f"give 1 band (used as grey) or 3 (R, G, B), got {len(bands)}")
    return bands


class Scaling(_Strict):
    """How raw values map to 0..255: ``auto`` (default), ``percentile``, ``minmax``, ``range`` or ``none``.

    YAML forms: ``scaling: minmax``, ``scaling: {percentile: [1, 99]}``, ``scaling: {range: [0, 3000]}``.
    """

    method: Literal["auto", "percentile", "minmax", "range", "none"] = "auto"
    percentile: tuple[float, float] = (2.0, 98.0)
    range: tuple[float, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"method": value}
        if isinstance(value, dict) and "method" not in value:
            for method in ("range", "percentile"):
                if method in value:
                    return {"method": method, **value}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Scaling:
        lo, hi = self.percentile
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentile must be [low, high] with 0 <= low < high <= 100, got {[lo, hi]}")
        if self.method == "range" and (self.range is None or not self.range[0] < self.range[1]):
            raise ValueError("scaling 'range' needs `range: [low, high]` with low < high")
        return self

    def spec(self) -> ScalingSpec:
        """The pipeline's form of this option."""
        from rsrs.pipeline.scaling import ScalingSpec

        return ScalingSpec(method=self.method, percentiles=self.percentile, value_range=self.range)


class StacSource(_Strict):
    """A static STAC ``catalog`` file or an ``api`` to search, and which assets and bands to read."""

    catalog: str | None = None
    api: str | None = None
    collections: list[str] | None = None
    bbox: Annotated[list[float], Field(min_length=4, max_length=4)] | None = None
    datetime: str | None = None
    query: dict[str, Any] | None = None
    filter: dict[str, Any] | str | None = None
    max_items: Annotated[int, Field(ge=1)] | None = None
    asset: str | None = None
    assets: Annotated[list[str], Field(min_length=1, max_length=3)] | None = None
    bands: BandList | None = None

    resolve_paths = field_validator("catalog")(resolve_path)
    check_band_count = field_validator("bands")(_check_band_count)

    @field_validator("datetime", mode="before")
    @classmethod
    def _datetime_text(cls, value: Any) -> Any:
        # YAML reads a bare `2020-01-01` as a date object
        return value.isoformat() if isinstance(value, dt.date) else value

    @model_validator(mode="after")
    def _consistent(self) -> StacSource:
        if (self.catalog is None) == (self.api is None):
            raise ValueError("give exactly one of `catalog` (a static catalog file) or `api` (a STAC API URL)")
        if self.catalog is not None and (self.query or self.filter):
            raise ValueError(
                "`query` and `filter` need a STAC `api`; a static catalog is filtered only by "
                "collections, bbox and datetime"
            )
        if self.asset is not None and self.assets is not None:
            raise ValueError("give `asset` (one multi-band asset) or `assets` (single-band, stacked), not both")
        if self.assets is not None and len(self.assets) == 2:
            raise ValueError("`assets` needs 1 or 3 entries (R, G, B)")
        if self.assets is not None and self.bands is not None and len(self.bands) != len(self.assets):
            raise ValueError("with `assets`, give one band per asset or leave `bands` out")
        if self.bbox is not None and not (self.bbox[0] <= self.bbox[2] and self.bbox[1] <= self.bbox[3]):
            raise ValueError("bbox must be [west, south, east, north]")
        return self


class InputSpec(_Strict):
    """One entry of ``inputs``: ``geotiff`` (path, glob or URL) or ``stac``, with its ``scaling``."""

    geotiff: str | None = None
    stac: StacSource | None = None
    bands: BandList | None = None
    scaling: Scaling = Scaling()

    resolve_paths = field_validator("geotiff")(resolve_path)
    check_band_count = field_validator("bands")(_check_band_count)

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if (self.geotiff is None) == (self.stac is None):
            raise ValueError("each input needs exactly one of `geotiff:` or `stac:`")
        if self.stac is not None and self.bands is not None:
            raise ValueError("for a STAC input put `bands` under `stac:`")
        return self

    @property
    def label(self) -> str:
        """A short name of this input for messages."""
        if self.geotiff is not None:
            return self.geotiff
        assert self.stac is not None
        return self.stac.catalog or self.stac.api or "stac"


def query_slug(text: str) -> str:
    """A query id from its text: lower-case ASCII words joined by ``-``, at most 40 characters; a text without
    ASCII letters or digits (e.g. Chinese) gets ``q-`` and a short hash of the text, distinct per text."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return slug or f"q-{hashlib.sha1(text.strip().encode('utf-8')).hexdigest()[:8]}"


class Query(_Strict):
    """A sentence to segment, its id (derived from the text when not given) and optionally its true mask.

    ``truth`` is a 0/1 (or 0/255) raster on the scene's grid; when given, the run reports the IoU of the
    thresholded mosaic against it.
    """

    id: str
    text: Annotated[str, Field(min_length=1)]
    truth: str | None = None

    resolve_paths = field_validator("truth")(resolve_path)

    @field_validator("text")
    @classmethod
    def _has_words(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("a query's text is empty or only whitespace; write what to find")
        return text

    @model_validator(mode="before")
    @classmethod
    def _derive_id(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"text": value}
        if isinstance(value, dict) and "id" not in value and isinstance(value.get("text"), str):
            value = {**value, "id": query_slug(value["text"])}
        return value


class ModelSpec(_Strict):
    """Which model: a ``preset`` name or a model ``config`` file, optional fine-tuned ``checkpoint``."""

    preset: str | None = None
    config: str | None = None
    checkpoint: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch.compile the image encoders and the decoder in each worker (for GPUs: the first batch compiles, or
    # loads from the per-machine cache ~/.cache/rsrs/inductor, then runs inside the worker's CUDA graphs)
    compile: bool = False
    # fp8: the image encoders' linear layers in float8 (H100/H200 only; the masks change slightly)
    precision: Literal["auto", "fp8"] = "auto"

    resolve_paths = field_validator("config", "checkpoint")(resolve_path)

    @model_validator(mode="before")
    @classmethod
    def _default_preset(cls, value: Any) -> Any:
        if isinstance(value, str):  # `model: tiny`
            return {"preset": value}
        if isinstance(value, dict) and value.get("preset") is None and value.get("config") is None:
            return {**value, "preset": DEFAULT_PRESET}
        return value

    @model_validator(mode="after")
    def _one_model(self) -> ModelSpec:
        if self.preset is not None and self.config is not None:
            raise ValueError("give `preset` or `config`, not both")
        if self.precision == "fp8" and self.device == "cpu":
            raise ValueError("precision fp8 needs an H100/H200 GPU; set device to cuda (or auto), or precision to auto")
        return self

    @property
    def name(self) -> str:
        """What ``rsrs.model.load_model`` takes: the preset name or the config path."""
        return self.preset or self.config or ""

    @property
    def source(self) -> str:
        """The model workers load: the fine-tuned checkpoint when given, else :attr:`name`."""
        return self.checkpoint or self.name


class Tiling(_Strict):
    """Tile size and context ``overlap`` in pixels, tiles per model batch."""

    tile_size: Annotated[int, Field(ge=32)] = 1024
    overlap: Annotated[int, Field(ge=0)] = 128
    batch_size: Annotated[int, Field(ge=1)] = 8

    @model_validator(mode="after")
    def _overlap_fits(self) -> Tiling:
        if 2 * self.overlap >= self.tile_size:
            raise ValueError(f"overlap ({self.overlap}) must be less than half of tile_size ({self.tile_size})")
        return self


class Output(_Strict):
    """Where outputs go and how probabilities become polygons."""

    dir: str = "out"
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    min_area_m2: Annotated[float, Field(ge=0.0)] = 0.0
    vector_crs: str = "EPSG:4326"
    overlay: bool = False  # write overlays/<scene_id>.png: the scene, each query's mask and polygons, a legend
    cog: bool = False  # write cogs/<scene_id>/<query_id>.tif: Cloud-Optimized GeoTIFFs of the probabilities

    resolve_paths = field_validator("dir")(resolve_path)

    @field_validator("vector_crs")
    @classmethod
    def _known_crs(cls, value: str) -> str:
        import pyproj

        try:
            pyproj.CRS.from_user_input(value)
        except pyproj.exceptions.CRSError as err:
            raise ValueError(f"unknown CRS {value!r}; use e.g. EPSG:4326") from err
        return value


class Compute(_Strict):
    """The Dask cluster: an existing ``scheduler`` address, or a local one of ``n_workers``.

    ``allowed_failures``: how many times a task may be running on a worker that dies (a crash, out of memory, a
    lost spot machine) and be rescheduled before its scene fails (Dask's ``distributed.scheduler.allowed-failures``;
    for the clusters rsrs starts: an existing cluster's scheduler keeps its own setting).

    ``tasks_per_gpu``: tasks that share one GPU at once, each asking for that share of the worker's ``GPU``
    resource (so give GPU workers that many threads). While one task reads its first tiles or waits for its last
    writes, the others keep the GPU fed; more cost threads and pinned host memory (each task holds three batches of
    tiles, pinned as the model warms up). 1, 2 or 4: shares a float holds exactly.
    """

    scheduler: str | None = None
    n_workers: Annotated[int, Field(ge=1)] = 1
    gpus_per_worker: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    allowed_failures: Annotated[int, Field(ge=0)] = 3
    tasks_per_gpu: Literal[1, 2, 4] = 2


class Network(_Strict):
    """Retries and timeouts for remote inputs (COGs read through GDAL, STAC API searches).

    A request that fails with HTTP 429/500/502/503/504, a reset connection or a timeout is retried ``retries``
    times, waiting ``retry_delay_s`` and then exponentially longer; a request not finished within ``timeout_s``
    seconds (a stalled server) is abandoned and retried.
    """

    retries: Annotated[int, Field(ge=0)] = 5
    retry_delay_s: Annotated[float, Field(ge=0.0)] = 1.0
    timeout_s: Annotated[float, Field(gt=0.0)] = 60.0

    def options(self) -> HttpOptions:
        """The pipeline's form of this section."""
        from rsrs.pipeline.network import HttpOptions

        return HttpOptions(retries=self.retries, retry_delay_s=self.retry_delay_s, timeout_s=self.timeout_s)


class Job(_Strict):
    """A validated job: what to read, what to look for, with which model, and where to write."""

    inputs: Annotated[list[InputSpec], Field(min_length=1)]
    queries: list[Query]
    model: ModelSpec = ModelSpec(preset=DEFAULT_PRESET)
    tiling: Tiling = Tiling()
    output: Output = Output()
    compute: Compute = Compute()
    network: Network = Network()
    on_error: Literal["skip", "fail"] = "skip"

    _source: str | None = PrivateAttr(default=None)

    @field_validator("queries", mode="after")
    @classmethod
    def _unique_ids(cls, queries: list[Query]) -> list[Query]:
        if not queries:
            raise ValueError("no queries")
        seen: set[str] = set()
        for query in queries:
            if query.id in seen:
                raise ValueError(f"query id '{query.id}' is used twice; give each query a distinct `id`")
            seen.add(query.id)
        return queries

    @property
    def source(self) -> str | None:
        """The job file this job was loaded from, if any."""
        return self._source


#: What to say when a required list is missing or empty.
_EMPTY_HINTS = {
    "queries": 'add at least one under `queries:` (e.g. `- "red-roofed buildings"`)',
    "inputs": "add at least one under `inputs:` (e.g. `- geotiff: data/*.tif`)",
}


def parse_job(data: Any, *, source: str | Path = "job") -> Job:
    """Validate a job mapping; relative paths resolve against ``source``'s folder when it is a file."""
    source = str(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with `inputs:` and `queries:`, got {type(data).__name__}")
    base = Path(source).resolve().parent if Path(source).is_file() else None
    job = validate(Job, data, source=source, context={"base_dir": base}, hints=_EMPTY_HINTS)
    job._source = source
    return job


def load_job(path: str | Path) -> Job:
    """Read and validate a job YAML file."""
    return parse_job(load_yaml_mapping(path, what="job file"), source=path)
