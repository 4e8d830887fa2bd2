"""The STAC catalog of a run: valid STAC 1.1 (checked offline), items and assets that open what they describe."""

import dataclasses
import datetime as dt
import json
import shutil

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import shapely
import xarray as xr
from affine import Affine
from jsonschema.validators import validator_for
from PIL import Image
from pyproj import Transformer
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension
from pystac.validation.local_validator import get_local_schema_cache
from rasterio.crs import CRS
from referencing import Registry, Resource

from rsrs.pipeline.cog import write_scene_cogs
from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.scenes import BandSource, Scene
from rsrs.workflows.export import export_cogs
from rsrs.workflows.job import parse_job
from rsrs.workflows.run import run_job
from rsrs.workflows.run_catalog import SceneOutputs, footprint, write_run_catalog
from rsrs.workflows.run_report import SceneReport, SceneStatus
from tests.mosaics import GRIDS, write_mosaic
from tests.workflows.runs import write_job

STARTED = dt.datetime(2024, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
#: The STAC 1.1 core and GeoJSON schemas pystac ships; the registry cannot fetch anything else (no network).
SCHEMAS = get_local_schema_cache()
REGISTRY = Registry().with_resources((uri, Resource.from_contents(schema)) for uri, schema in SCHEMAS.items())
#: A transverse Mercator CRS with no EPSG code: the catalog must describe it by WKT2.
CUSTOM_CRS = "+proj=tmerc +lat_0=0 +lon_0=12 +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"


def stac_errors(data: dict) -> list[str]:
    """Errors of a STAC object against the STAC 1.1 JSON schema of its type, validated offline."""
    kind = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}[data["type"]]
    schema = SCHEMAS[f"https://schemas.stacspec.org/v{data['stac_version']}/{kind}-spec/json-schema/{kind}.json"]
    return [
        f"{list(e.absolute_path)}: {e.message}"
        for e in validator_for(schema)(schema, registry=REGISTRY).iter_errors(data)
    ]


def _scene(scene_id: str, grid: RasterGrid, **stac) -> Scene:
    band = BandSource(f"/data/{scene_id}.tif", 1)
    return Scene(scene_id, grid, (band,) * 3, "uint8", ((0.0, 255.0),) * 3, "none", f"/data/{scene_id}.tif", **stac)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run folder: 4 scenes (UTM file, Web Mercator and WGS84 STAC items, a CRS without EPSG code)
    with mosaics, COGs, polygons and one overlay, one failed scene, and its catalog."""
    out = tmp_path_factory.mktemp("run")
    grids = GRIDS | {"custom": RasterGrid((60, 70), Affine(5.0, 0.0, 1000.0, 0.0, -5.0, 5000000.0), CUSTOM_CRS)}
    scenes = [
        _scene("utm", grids["utm"]),
        _scene("mercator", grids["mercator"], datetime="2020-05-01T10:00:00+00:00", item_href="/stac/mercator.json"),
        _scene(
            "wgs84",
            grids["wgs84"],
            datetime="2021-06-01T00:00:00+00:00/2021-06-30T00:00:00+00:00",
            item_href="/stac/wgs84.json",
        ),  # fmt: skip
        _scene("custom", grids["custom"]),
        _scene("broken", grids["utm"]),
    ]
    outputs = {}
    for i, scene in enumerate(scenes[:4]):
        write_mosaic(out / "masks.zarr", scene.id, scene.grid, seed=i)
        cogs = write_scene_cogs(out / "masks.zarr", scene.id, out / "cogs" / scene.id)
        outputs[scene.id] = SceneOutputs(
            cogs={qid: path.relative_to(out).as_posix() for qid, path in cogs.items()}, polygons="polygons.parquet"
        )
    polygons = [footprint(s.grid).centroid.buffer(1e-5) for s in scenes[:4]]  # one small polygon per scene
    frame = gpd.GeoDataFrame({"scene_id": [s.id for s in scenes[:4]]}, geometry=polygons, crs="EPSG:4326")
    frame.to_parquet(out / "polygons.parquet")
    (out / "overlays").mkdir()
    Image.new("RGB", (8, 8)).save(out / "overlays" / "utm.png")
    outputs["utm"] = dataclasses.replace(outputs["utm"], overlay="overlays/utm.png")
    reports = [SceneReport(id=s.id, source=s.source, status=SceneStatus.DONE, polygons=1) for s in scenes[:4]]
    reports[0].truth_iou = {"ponds": 0.75}
    reports.append(SceneReport(id="broken", source=scenes[4].source, status=SceneStatus.FAILED, error="cannot read"))
    job = parse_job(
        {
            "inputs": [{"geotiff": "/data/*.tif"}],
            "queries": [{"id": "ponds", "text": "the dark ponds"}, {"id": "roofs", "text": "red-roofed buildings"}],
            "model": {"preset": "tiny", "checkpoint": "/runs/ft/best.safetensors"},
        }
    )
    kwargs = {"job": job, "scenes": scenes, "reports": reports, "outputs": outputs, "started": STARTED}
    path = write_run_catalog(out, **kwargs)
    return {"out": out, "path": path, "scenes": {s.id: s for s in scenes}, "kwargs": kwargs}


def test_catalog_and_every_item_are_valid_stac_checked_offline(run):
    files = [run["path"], *sorted((run["out"] / "items").glob("*.json"))]
    assert [p.name for p in files] == ["catalog.json", "custom.json", "mercator.json", "utm.json", "wgs84.json"]
    for path in files:
        assert stac_errors(json.loads(path.read_text())) == [], path


def test_the_offline_validator_rejects_invalid_stac(run):
    item = json.loads((run["out"] / "items" / "utm.json").read_text())
    del item["properties"]["datetime"]
    item["bbox"] = [1.0]
    assert stac_errors(item)


def test_items_have_footprints_assets_and_extensions_that_match_the_files(run):
    collection = pystac.read_file(run["path"])
    assert isinstance(collection, pystac.Collection)
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == ["custom", "mercator", "utm", "wgs84"]  # the failed scene has none
    for scene_id, item in items.items():
        grid = run["scenes"][scene_id].grid
        assert shapely.geometry.shape(item.geometry).equals(footprint(grid))
        assert set(item.assets) == {"probability", "probability-ponds", "probability-roofs", "polygons"} | (
            {"overlay"} if scene_id == "utm" else set()
        )
        for key in ("probability-ponds", "probability-roofs"):
            asset = item.assets[key]
            assert asset.media_type == pystac.MediaType.COG and asset.roles == ["data"]
            proj, band = ProjectionExtension.ext(asset), RasterExtension.ext(asset).bands[0]
            with rasterio.open(asset.get_absolute_href()) as src:
                assert proj.shape == list(src.shape) and proj.transform == list(src.transform)[:6]
                assert CRS.from_user_input(proj.code or proj.wkt2) == src.crs
                assert (band.nodata, band.scale, band.offset) == (src.nodata, src.scales[0], src.offsets[0])
                assert band.data_type == src.dtypes[0] == "uint8"
                assert asset.title == f"{src.tags()['query_id']}: {src.tags()['query']}"
        assert ProjectionExtension.ext(items["utm"].assets["probability"]).code == "EPSG:32614"
    custom = ProjectionExtension.ext(items["custom"].assets["probability-ponds"])
    assert custom.code is None and CRS.from_wkt(custom.wkt2) == CRS.from_user_input(CUSTOM_CRS)


def test_the_zarr_asset_opens_with_its_open_kwargs(run):
    item = pystac.read_file(run["out"] / "items" / "mercator.json")
    asset = item.assets["probability"]
    assert asset.media_type == "application/vnd.zarr"
    kwargs = XarrayAssetsExtension.ext(asset).open_kwargs
    assert kwargs == {"engine": "zarr", "group": "mercator", "decode_coords": "all"}
    ds = xr.open_dataset(asset.get_absolute_href(), **kwargs)
    assert ds["probability"].rio.crs == CRS.from_epsg(3857)
    assert ds["probability"].rio.transform() == GRIDS["mercator"].transform
    assert list(ds["query"].values) == ["ponds", "roofs"]


def test_a_scenes_polygons_load_from_the_catalog_with_geopandas(run):
    collection = pystac.Collection.from_file(run["path"])
    item = collection.get_item("wgs84")
    frame = gpd.read_parquet(item.assets["polygons"].get_absolute_href())
    frame = frame[frame.scene_id == item.id]
    assert len(frame) == 1 and shapely.geometry.shape(item.geometry).contains(frame.geometry.iloc[0])


def test_dates_come_from_the_input_item_else_from_the_run_start(run):
    items = {i.id: i for i in pystac.read_file(run["path"]).get_items()}
    assert items["utm"].datetime == STARTED
    assert items["utm"].properties["rsrs:datetime_source"].startswith("run start")
    assert items["mercator"].datetime == dt.datetime(2020, 5, 1, 10, tzinfo=dt.UTC)
    assert items["mercator"].properties["rsrs:datetime_source"] == "input STAC item"
    wgs84 = items["wgs84"]
    assert wgs84.datetime is None
    assert wgs84.common_metadata.start_datetime == dt.datetime(2021, 6, 1, tzinfo=dt.UTC)
    assert wgs84.common_metadata.end_datetime == dt.datetime(2021, 6, 30, tzinfo=dt.UTC)
    assert [link.href for link in items["mercator"].links if link.rel == "derived_from"] == ["/stac/mercator.json"]
    assert not [link for link in items["utm"].links if link.rel == "derived_from"]
    assert items["utm"].properties["rsrs:truth_iou"] == {"ponds": 0.75}
    assert all(item.common_metadata.created == STARTED for item in items.values())


def test_the_collection_holds_extent_queries_model_and_input_links(run):
    collection = pystac.read_file(run["path"])
    items = list(collection.get_items())
    (bbox,) = collection.extent.spatial.bboxes
    for item in items:
        assert shapely.box(*bbox).contains(shapely.box(*item.bbox))
    (interval,) = collection.extent.temporal.intervals
    assert interval == [dt.datetime(2020, 5, 1, 10, tzinfo=dt.UTC), STARTED]
    assert collection.extra_fields["rsrs:queries"] == [
        {"id": "ponds", "text": "the dark ponds"}, {"id": "roofs", "text": "red-roofed buildings"}
    ]  # fmt: skip
    assert collection.extra_fields["rsrs:model"]["checkpoint"] == "/runs/ft/best.safetensors"
    assert collection.extra_fields["rsrs:model"]["preset"] == "tiny"
    links = sorted(link.href for link in collection.links if link.rel == "derived_from")
    assert links == ["/stac/mercator.json", "/stac/wgs84.json"]
    assert collection.id == f"rsrs-{run['out'].name}"


def test_the_catalog_moves_with_its_folder(run, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(run["out"], moved)
    item = pystac.read_file(moved / "catalog.json").get_item("utm")
    for asset in item.assets.values():
        href = asset.get_absolute_href()
        assert href.startswith(str(moved)) and (moved / href[len(str(moved)) + 1 :]).exists(), href
    text = (moved / "catalog.json").read_text() + (moved / "items" / "utm.json").read_text()
    assert str(run["out"]) not in text  # nothing points back into the original folder


def test_rewriting_drops_items_of_scenes_no_longer_done_and_leaves_no_temporary_files(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    kwargs = dict(run["kwargs"])
    kwargs["reports"] = [
        r if r.id != "wgs84" else SceneReport(id="wgs84", source="", status=SceneStatus.FAILED)
        for r in kwargs["reports"]
    ]
    write_run_catalog(out, **kwargs)
    assert sorted(p.name for p in (out / "items").iterdir()) == ["custom.json", "mercator.json", "utm.json"]
    assert sorted(i.id for i in pystac.read_file(out / "catalog.json").get_items()) == ["custom", "mercator", "utm"]
    assert not list(out.rglob("*.tmp"))


def test_footprint_follows_the_projected_grid_and_winds_counter_clockwise():
    grid = RasterGrid((1000, 1000), Affine(30.0, 0.0, 300000.0, 0.0, -30.0, 5500000.0), "EPSG:32633")
    polygon = footprint(grid)
    assert polygon.exterior.is_ccw
    to_wgs84 = Transformer.from_crs("EPSG:32633", 4326, always_xy=True)
    ny, nx = grid.shape
    for col, row in ((0, 0), (nx, 0), (nx, ny), (0, ny), (nx / 2, 0)):  # corners and a mid-edge point
        lon, lat = to_wgs84.transform(*(grid.transform @ (col, row)))
        assert polygon.exterior.distance(shapely.Point(lon, lat)) < 1e-9
    square = footprint(GRIDS["wgs84"])
    assert square.equals(shapely.box(*GRIDS["wgs84"].bounds)) and len(square.exterior.coords) == 5
    assert np.allclose(square.bounds, GRIDS["wgs84"].bounds)


def test_rsrs_run_writes_cogs_and_a_catalog_of_its_scenes(tmp_path, scheduler):
    """A run with output.cog: true leaves cogs/ and catalog.json with an item per scene whose assets open."""
    job = write_job(tmp_path, scenes={"a": (50, 60), "b": (40, 40)}, output={"dir": "out", "threshold": 0.49,
                                                                             "cog": True})  # fmt: skip
    report = run_job(job, scheduler=scheduler)
    out = tmp_path / "out"
    assert report["outputs"]["catalog"] == "catalog.json" and report["outputs"]["cogs"] == "cogs"
    collection = pystac.read_file(out / "catalog.json")
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == ["a", "b"]
    for path in [out / "catalog.json", *(out / "items").glob("*.json")]:
        assert stac_errors(json.loads(path.read_text())) == [], path
    for scene_id, item in items.items():
        mosaic = xr.open_zarr(out / "masks.zarr", group=scene_id, mask_and_scale=False)["probability"]
        for q, query_id in enumerate(mosaic["query"].values):
            with rasterio.open(item.assets[f"probability-{query_id}"].get_absolute_href()) as cog:
                np.testing.assert_array_equal(cog.read(1), mosaic.values[q])
        polygons = gpd.read_parquet(item.assets["polygons"].get_absolute_href())
        assert set(polygons["scene_id"]) <= {scene_id}
        assert len(polygons) == item.properties["rsrs:polygons"]
    write_job(tmp_path, scenes={"a": (50, 60), "b": (40, 40)}, output={"dir": "out", "threshold": 0.49})
    run_job(job, scheduler=scheduler, overwrite=True)  # without COGs: --overwrite leaves none behind
    item = pystac.read_file(out / "items" / "a.json")
    assert not (out / "cogs").exists() and not [key for key in item.assets if key.startswith("probability-")]


def test_cogs_exported_after_the_run_join_its_catalog_and_reruns_keep_them(tmp_path, scheduler):
    job = write_job(tmp_path, scenes={"a": (50, 60)}, output={"dir": "out", "threshold": 0.49})
    run_job(job, scheduler=scheduler)
    out = tmp_path / "out"
    assert not [key for key in pystac.read_file(out / "items" / "a.json").assets if key.startswith("probability-")]
    exported = export_cogs(out, progress=False)
    assert exported.catalog == out / "catalog.json"

    def assert_catalog_lists_the_cogs() -> None:
        collection = pystac.read_file(out / "catalog.json")
        assert "probability COGs per query" in collection.description
        (item,) = collection.get_items()
        for path in [out / "catalog.json", out / "items" / "a.json"]:
            assert stac_errors(json.loads(path.read_text())) == [], path
        for query_id, cog_path in exported.paths["a"].items():
            assert item.assets[f"probability-{query_id}"].get_absolute_href() == str(cog_path)

    assert_catalog_lists_the_cogs()
    run_job(job, scheduler=scheduler)  # a rerun of the job, output.cog unset
    assert_catalog_lists_the_cogs()
