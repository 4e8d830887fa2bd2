import datetime as dt
import json

import numpy as np
import pystac
import pytest

from rsrs.core.errors import RsrsError
from rsrs.pipeline.scenes import SceneNotFoundError, SceneReadError
from rsrs.pipeline.stac import StacApiError, StacError
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import parse_job
from tests.rasters import write_geotiff
from tests.servers import error_server, free_port


def job(inputs, on_error="skip", **sections):
    return parse_job({"inputs": inputs, "queries": ["ponds"], "on_error": on_error} | sections)


@pytest.fixture
def bad_files(tmp_path):
    """One good raster and the bad ones of each kind, by name."""
    write_geotiff(tmp_path / "good.tif", shape=(32, 32))
    write_geotiff(tmp_path / "nocrs.tif", shape=(32, 32), crs=None)
    (tmp_path / "corrupt.tif").write_bytes(np.random.default_rng(0).bytes(2000))
    return tmp_path


def test_skip_records_each_bad_input_and_keeps_the_good_ones(bad_files):
    items = bad_files / "empty.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    inputs = [
        {"geotiff": str(bad_files / "*.tif")},
        {"geotiff": str(bad_files / "missing.tif")},
        {"stac": {"catalog": str(items)}},
        {"stac": {"api": f"http://127.0.0.1:{free_port()}"}},
    ]
    resolved = resolve_scenes(job(inputs))
    assert [s.id for s in resolved.scenes] == ["good"]
    messages = {f.source.rsplit("/", 1)[-1]: f.message for f in resolved.failures}
    assert "cannot read" in messages["corrupt.tif"]
    assert "no CRS" in messages["nocrs.tif"]
    assert "raster not found" in messages["missing.tif"]
    assert "no STAC items found" in messages["empty.json"]
    assert "cannot reach STAC API" in messages[next(k for k in messages if k.startswith("127.0.0.1"))]
    assert all("\n" not in f.message for f in resolved.failures)


@pytest.mark.parametrize(
    ("name", "error"),
    [("missing.tif", SceneNotFoundError), ("corrupt.tif", SceneReadError), ("nocrs.tif", SceneReadError)],
)
def test_fail_raises_the_first_bad_file(bad_files, name, error):
    with pytest.raises(error, match=name):
        resolve_scenes(job([{"geotiff": str(bad_files / "good.tif")}, {"geotiff": str(bad_files / name)}], "fail"))


def test_fail_on_api_answering_an_error():
    with error_server(500) as url, pytest.raises(StacApiError, match="HTTP 500 .*2 retries"):
        resolve_scenes(job([{"stac": {"api": url}}], "fail", network={"retries": 2, "retry_delay_s": 0}))


def test_fail_on_missing_asset(tmp_path):
    write_geotiff(tmp_path / "a.tif", shape=(16, 16))
    item = pystac.Item("x", {"type": "Point", "coordinates": [0, 0]}, [0, 0, 0, 0], dt.datetime(2020, 1, 1), {})
    item.add_asset("image", pystac.Asset(href="a.tif"))
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item.to_dict()]}))
    with pytest.raises(StacError, match="item 'x' has no asset 'visual'; available: image"):
        resolve_scenes(job([{"stac": {"catalog": str(tmp_path / "items.json"), "asset": "visual"}}], "fail"))


def test_errors_are_rsrs_errors_with_builtin_bases():
    assert issubclass(SceneNotFoundError, FileNotFoundError) and issubclass(StacApiError, ConnectionError)
    assert all(issubclass(e, RsrsError) for e in (SceneNotFoundError, SceneReadError, StacError, StacApiError))


def test_scene_ids_are_unique_across_inputs(tmp_path):
    (tmp_path / "b").mkdir()
    write_geotiff(tmp_path / "s.tif", shape=(16, 16))
    write_geotiff(tmp_path / "b" / "s.tif", shape=(16, 16))
    resolved = resolve_scenes(job([{"geotiff": str(tmp_path / "s.tif")}, {"geotiff": str(tmp_path / "b/s.tif")}]))
    assert [s.id for s in resolved.scenes] == ["s", "s-2"]


def test_per_input_scaling_reaches_the_scene(tmp_path):
    write_geotiff(tmp_path / "u16.tif", shape=(16, 16), dtype="uint16")
    resolved = resolve_scenes(job([{"geotiff": str(tmp_path / "u16.tif"), "scaling": {"range": [0, 4000]}}]))
    assert resolved.scenes[0].scaling == ((0.0, 4000.0),) * 3


def test_scenes_of_many_files_keep_input_order_and_fail_at_the_first_bad_one(tmp_path):
    names = [f"s{i:02d}" for i in range(12)]  # opened on several threads
    for name in names:
        if name == "s03":
            (tmp_path / f"{name}.tif").write_bytes(np.random.default_rng(3).bytes(2000))
        else:
            write_geotiff(tmp_path / f"{name}.tif", shape=(16, 16), crs=None if name == "s07" else "EPSG:32614")
    pattern = {"geotiff": str(tmp_path / "s*.tif")}
    resolved = resolve_scenes(job([pattern]))
    assert [s.id for s in resolved.scenes] == [n for n in names if n not in ("s03", "s07")]
    assert [f.source.rsplit("/", 1)[-1] for f in resolved.failures] == ["s03.tif", "s07.tif"]
    with pytest.raises(SceneReadError, match="s03.tif"):
        resolve_scenes(job([pattern], "fail"))
