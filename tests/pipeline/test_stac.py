import datetime as dt
import json
from pathlib import Path

import pystac
import pystac_client
import pytest

from rsrs.core.errors import InputDataError
from rsrs.pipeline.network import HttpOptions
from rsrs.pipeline.stac import StacApiError, StacError, load_items, scene_from_item
from tests.rasters import write_band_files, write_geotiff
from tests.servers import error_server, free_port, rustac_api, rustac_available


def _item(item_id: str, assets: dict, *, day: int = 1, lon: float = -99.0) -> pystac.Item:
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [lon, 37.0]},
        bbox=[lon, 37.0, lon, 37.0],
        datetime=dt.datetime(2020, 1, day, tzinfo=dt.UTC),
        properties={},
    )
    for key, href in assets.items():
        item.add_asset(key, pystac.Asset(href=str(href), media_type=pystac.MediaType.COG, roles=["data"]))
    return item


def write_static_catalog(root, *, n: int = 3) -> str:
    """A self-contained catalog -> collection -> n items, asset hrefs relative; returns catalog.json."""
    collection = pystac.Collection(
        id="synth",
        description="synthetic",
        extent=pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])),
    )
    (root / "data").mkdir()
    for i in range(n):
        tif = write_geotiff(root / "data" / f"s{i}.tif", shape=(64, 64), seed=i)
        collection.add_item(_item(f"scene-{i}", {"image": tif}, day=i + 1, lon=-99.0 + i))
    catalog = pystac.Catalog(id="root", description="test")
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return str(root / "stac" / "catalog.json")


def test_static_catalog_items_become_scenes_with_relative_hrefs(tmp_path):
    catalog = write_static_catalog(tmp_path)
    items = load_items(catalog=catalog)
    assert [i.id for i in items] == ["scene-0", "scene-1", "scene-2"]
    assert items[0].assets["image"].href.startswith("../")  # stored relative
    scene = scene_from_item(items[0])
    assert scene.id == "scene-0"
    assert scene.bands[0].href == str(tmp_path / "data" / "s0.tif")


def test_static_catalog_filters_by_bbox_datetime_collection_and_max_items(tmp_path):
    catalog = write_static_catalog(tmp_path)
    assert [i.id for i in load_items(catalog=catalog, bbox=[-98.5, 36, -97.5, 38])] == ["scene-1"]
    assert [i.id for i in load_items(catalog=catalog, datetime="2020-01-02/..")] == ["scene-1", "scene-2"]
    assert [i.id for i in load_items(catalog=catalog, datetime="2020-01-01")] == ["scene-0"]
    assert len(load_items(catalog=catalog, collections=["synth"], max_items=2)) == 2
    with pytest.raises(StacError, match="no STAC items found .*collections=\\['other'\\]"):
        load_items(catalog=catalog, collections=["other"])


def test_scenes_keep_their_items_datetime_and_location(tmp_path):
    catalog = write_static_catalog(tmp_path)
    item = load_items(catalog=catalog)[1]
    scene = scene_from_item(item)
    assert scene.datetime == "2020-01-02T00:00:00+00:00"
    assert scene.item_href == str(tmp_path / "stac" / "synth" / "scene-1" / "scene-1.json")
    item.datetime = None
    item.common_metadata.start_datetime = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    item.common_metadata.end_datetime = dt.datetime(2020, 1, 31, tzinfo=dt.UTC)
    assert scene_from_item(item).datetime == "2020-01-01T00:00:00+00:00/2020-01-31T00:00:00+00:00"


def test_item_collection_file_resolves_relative_hrefs_against_itself(tmp_path):
    write_geotiff(tmp_path / "a.tif", shape=(32, 32))
    features = {"type": "FeatureCollection", "features": [_item("a", {"image": "a.tif"}).to_dict()]}
    path = tmp_path / "items.json"
    path.write_text(json.dumps(features))
    scene = scene_from_item(load_items(catalog=str(path))[0])
    assert scene.bands[0].href == str(tmp_path / "a.tif")


def test_single_band_assets_are_stacked_in_order(tmp_path):
    paths = write_band_files(tmp_path, shape=(64, 64))
    item = _item("s2", dict(zip(("B04", "B03", "B02"), paths, strict=True)))
    scene = scene_from_item(item, assets=["B04", "B03", "B02"])
    assert [b.href for b in scene.bands] == [str(p) for p in paths]
    assert scene.grid.shape == (64, 64)  # the finest asset


def test_missing_asset_names_item_and_available_assets(tmp_path):
    item = _item("s2", {"B04": write_geotiff(tmp_path / "b4.tif", count=1, shape=(16, 16))})
    with pytest.raises(StacError, match="item 's2' has no asset 'B08'; available: B04"):
        scene_from_item(item, assets=["B04", "B08", "B04"])


def test_missing_band_names_item(tmp_path):
    item = _item("x", {"image": write_geotiff(tmp_path / "a.tif", shape=(16, 16))})
    with pytest.raises(InputDataError, match="STAC item 'x': band 7 requested"):
        scene_from_item(item, asset="image", bands=[7, 2, 1])


def test_several_image_assets_need_a_choice(tmp_path):
    a = write_geotiff(tmp_path / "a.tif", shape=(16, 16))
    with pytest.raises(StacError, match="choose one with `asset:`"):
        scene_from_item(_item("x", {"one": a, "two": a}))


def test_real_local_catalog(real_data):
    items = load_items(catalog=str(real_data / "stac" / "local-catalog" / "catalog.json"))
    scenes = [scene_from_item(item) for item in items]
    assert {s.id for s in scenes} == {p.stem for p in (real_data / "imagery").glob("*.tif")}
    imagery = (real_data / "imagery").resolve()  # ../shared may be a symbolic link
    for scene in scenes:
        assert Path(scene.bands[0].href).resolve().parent == imagery


@pytest.fixture(scope="module")
def stac_api(tmp_path_factory):
    """A real STAC API (rustac, in-memory) on 127.0.0.1 serving 3 items whose assets are local files."""
    if not rustac_available():
        pytest.skip("rustac is not installed (pip install rustac)")
    root = tmp_path_factory.mktemp("api")
    items = []
    for i in range(3):
        item = _item(
            f"scene-{i}", {"image": write_geotiff(root / f"s{i}.tif", shape=(48, 48), seed=i)}, day=i + 1, lon=-99.0 + i
        )
        item.collection_id = "synth"
        items.append(item.to_dict())
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with rustac_api(root / "items.json") as url:
        yield url, root


def test_api_search_by_collection_bbox_datetime_and_max_items(stac_api):
    url, _ = stac_api
    assert [i.id for i in load_items(api=url, collections=["synth"])] == ["scene-0", "scene-1", "scene-2"]
    assert [i.id for i in load_items(api=url, bbox=[-98.5, 36, -97.5, 38])] == ["scene-1"]
    assert [i.id for i in load_items(api=url, datetime="2020-01-02/2020-12-31")] == ["scene-1", "scene-2"]
    assert len(load_items(api=url, max_items=2)) == 2


def test_api_items_point_at_local_files(stac_api):
    url, root = stac_api
    scene = scene_from_item(load_items(api=url, max_items=1)[0])
    assert scene.bands[0].href == str(root / "s0.tif")
    assert scene.grid.shape == (48, 48)


def test_api_with_no_matching_items(stac_api):
    url, _ = stac_api
    with pytest.raises(StacError, match="no STAC items found in STAC API"):
        load_items(api=url, collections=["nothing-here"])


def test_query_and_filter_reach_the_search(monkeypatch, stac_api):
    # rustac's in-memory backend ignores query/filter, so check what pystac-client is asked to send
    url, _ = stac_api
    seen = {}
    real_search = pystac_client.Client.search

    def spy(self, **kwargs):
        seen.update(kwargs)
        return real_search(self, **{k: v for k, v in kwargs.items() if k not in ("query", "filter", "filter_lang")})

    monkeypatch.setattr(pystac_client.Client, "search", spy)
    load_items(api=url, filter={"op": "=", "args": [{"property": "collection"}, "synth"]})
    assert seen["filter_lang"] == "cql2-json"
    load_items(api=url, query={"eo:cloud_cover": {"lt": 10}})
    assert seen["query"] == {"eo:cloud_cover": {"lt": 10}}


def test_unreachable_api_says_so():
    with pytest.raises(StacApiError, match="cannot reach STAC API .*refused"):
        load_items(api=f"http://127.0.0.1:{free_port()}")


def test_api_answering_an_error_names_the_status():
    with error_server(500) as url, pytest.raises(StacApiError, match="answered with HTTP 500 .*1 retries"):
        load_items(api=url, http=HttpOptions(retries=1, retry_delay_s=0))


def test_static_catalog_rejects_query():
    with pytest.raises(StacError, match="need a STAC API"):
        load_items(catalog="catalog.json", query={"x": {"eq": 1}})
