from pathlib import Path

import pytest
import yaml

from rsrs.core.errors import ConfigError
from rsrs.pipeline.scaling import ScalingSpec
from rsrs.workflows.job import Job, load_job, parse_job, query_slug

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "jobs"


def minimal(**extra) -> dict:
    return {"inputs": [{"geotiff": "data/*.tif"}], "queries": ["red-roofed buildings"], **extra}


def error_of(data, source="job.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_job(data, source=source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_fill_every_section():
    job = parse_job(minimal())
    assert job.tiling.tile_size == 1024 and job.tiling.overlap == 128 and job.tiling.batch_size == 8
    assert job.output.threshold == 0.5 and job.output.vector_crs == "EPSG:4326"
    assert job.compute.scheduler is None and job.compute.gpus_per_worker == "auto"
    assert job.model.preset == "rsrefseg-b" and job.model.device == "auto"
    assert job.on_error == "skip"


def test_every_design_field_is_accepted():
    data = {
        "inputs": [
            {"geotiff": "data/*.tif", "bands": [3, 2, 1], "scaling": {"range": [0, 3000]}},
            {
                "stac": {
                    "api": "https://example.com/stac",
                    "collections": ["naip"],
                    "bbox": [-99.2, 47.0, -99.1, 47.1],
                    "datetime": "2020-01-01/2020-12-31",
                    "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]},
                    "max_items": 50,
                    "asset": "image",
                    "bands": [1, 2, 3],
                },
                "scaling": "minmax",
            },
        ],
        "queries": [{"id": "ponds", "text": "the dark ponds next to the road"}, "red-roofed buildings"],
        "model": {"preset": "tiny", "checkpoint": "runs/best.safetensors", "device": "cpu"},
        "tiling": {"tile_size": 512, "overlap": 64, "batch_size": 4},
        "output": {"dir": "out/", "threshold": 0.4, "min_area_m2": 10, "vector_crs": "EPSG:3857"},
        "compute": {"scheduler": "tcp://host:8786", "n_workers": 2, "gpus_per_worker": 1},
        "on_error": "fail",
    }
    job = parse_job(data)
    assert [q.id for q in job.queries] == ["ponds", "red-roofed-buildings"]
    assert job.inputs[0].scaling.spec() == ScalingSpec(method="range", value_range=(0.0, 3000.0))
    assert job.inputs[1].scaling.spec().method == "minmax"
    assert job.compute.gpus_per_worker == 1


def test_unknown_key_names_key_path_and_nearest_key():
    message = error_of(minimal(tiling={"tile_sise": 512}))
    assert message == "unknown key 'tiling.tile_sise' in job.yaml; did you mean 'tile_size'?"


def test_unknown_key_in_a_list_entry():
    message = error_of({**minimal(), "inputs": [{"stac": {"catalog": "c.json", "colections": ["x"]}}]})
    assert "'inputs[0].stac.colections'" in message and "did you mean 'collections'?" in message


def test_unknown_top_level_key_without_near_match_lists_valid_keys():
    assert "valid keys: inputs, queries" in error_of(minimal(zzz=1))


def test_wrong_type_names_the_field_path():
    message = error_of(minimal(tiling={"tile_size": "big"}))
    assert message.startswith("invalid value for 'tiling.tile_size' in job.yaml")
    assert "'big'" in message


def test_union_type_error_names_the_field_not_the_union_member():
    message = error_of(minimal(compute={"gpus_per_worker": "many"}))
    assert "'compute.gpus_per_worker'" in message and "literal" not in message


def test_tasks_per_gpu_other_than_1_2_or_4_names_the_field_and_the_choices():
    message = error_of(minimal(compute={"tasks_per_gpu": 3}))
    assert "'compute.tasks_per_gpu'" in message and all(choice in message for choice in ("1", "2", "4"))


@pytest.mark.parametrize("queries", [[], None])
def test_empty_query_list_says_to_add_queries(queries):
    data = minimal()
    data["queries"] = queries
    assert error_of(data).startswith("no queries in job.yaml; add at least one under `queries:`")


def test_missing_queries_says_to_add_queries():
    data = minimal()
    del data["queries"]
    assert error_of(data).startswith("no queries in job.yaml")


def test_query_ids_must_be_unique():
    assert "query id 'a' is used twice" in error_of(
        minimal(queries=[{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    )
    assert "used twice" in error_of(minimal(queries=["Red roofs", "red roofs!"]))


def test_query_slug():
    assert query_slug("The dark ponds, next to the road!") == "the-dark-ponds-next-to-the-road"
    assert len(query_slug("word " * 40)) <= 40
    assert query_slug("???").startswith("q-")


def test_shorthand_queries_without_ascii_letters_get_distinct_ids():
    job = parse_job(minimal(queries=["红色屋顶的建筑", "池塘"]))
    ids = [q.id for q in job.queries]
    assert len(set(ids)) == 2 and all(i.startswith("q-") for i in ids)
    assert ids == [q.id for q in parse_job(minimal(queries=["红色屋顶的建筑", "池塘"])).queries]  # stable


@pytest.mark.parametrize("text", ["   ", "\t\n"])
def test_a_whitespace_only_query_is_an_error(text):
    message = error_of(minimal(queries=["ponds", {"id": "blank", "text": text}]))
    assert message.startswith("invalid value for 'queries[1].text' in job.yaml: a query's text is empty")


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"inputs": [{"geotiff": "a.tif", "stac": {"catalog": "c.json"}}]}, "exactly one of `geotiff:` or `stac:`"),
        ({"inputs": [{"stac": {"catalog": "c", "api": "http://x"}}]}, "exactly one of `catalog`"),
        ({"inputs": [{"stac": {"catalog": "c", "query": {"a": 1}}}]}, "need a STAC `api`"),
        ({"inputs": [{"stac": {"api": "http://x", "asset": "a", "assets": ["b"]}}]}, "not both"),
        ({"inputs": [{"geotiff": "a.tif", "bands": [1, 2]}]}, "give 1 band"),
        ({"inputs": [{"geotiff": "a.tif", "scaling": {"percentile": [90, 10]}}]}, "low < high"),
        ({"inputs": [{"geotiff": "a.tif", "scaling": "range"}]}, "needs `range: [low, high]`"),
        ({"tiling": {"tile_size": 256, "overlap": 128}}, "less than half of tile_size"),
        ({"output": {"vector_crs": "EPSG:999999"}}, "unknown CRS"),
        ({"model": {"preset": "tiny", "config": "m.yaml"}}, "not both"),
        ({"model": {"device": "tpu"}}, "'model.device'"),
        ({"model": {"device": "cpu", "precision": "fp8"}}, "precision fp8 needs an H100/H200 GPU"),
        ({"on_error": "ignore"}, "'on_error'"),
        ({"inputs": []}, "no inputs in job.yaml"),
    ],
)
def test_invalid_values_give_one_line(patch, fragment):
    assert fragment in error_of(minimal(**patch))


def test_relative_paths_resolve_against_the_job_folder(tmp_path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    path = folder / "job.yaml"
    data = minimal(model={"preset": "tiny", "checkpoint": "ckpt/best.safetensors"}, output={"dir": "out"})
    data["inputs"].append({"stac": {"catalog": "../cat/catalog.json"}})
    data["inputs"].append({"geotiff": "https://example.com/x.tif"})
    path.write_text(yaml.safe_dump(data))
    job = load_job(path)
    assert job.inputs[0].geotiff == str(folder / "data/*.tif")
    assert job.inputs[1].stac.catalog == str(tmp_path / "cat" / "catalog.json")
    assert job.inputs[2].geotiff == "https://example.com/x.tif"
    assert job.model.checkpoint == str(folder / "ckpt/best.safetensors")
    assert job.output.dir == str(folder / "out")
    assert job.source == str(path)


def test_yaml_dates_become_datetime_text(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inputs: [{stac: {api: 'http://x', datetime: 2020-01-01}}]\nqueries: [ponds]\n")
    assert load_job(path).inputs[0].stac.datetime == "2020-01-01"


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("inputs:\n  - geotiff: a.tif\nqueries: [ponds\nmodel: {preset: tiny}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*broken.yaml at line \d+"):
        load_job(path)


def test_missing_job_file(tmp_path):
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")


def test_job_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_job(path)


@pytest.mark.parametrize("name", ["geotiff.yaml", "stac-static.yaml", "stac-api.yaml"])
def test_example_jobs_validate(name):
    job = load_job(CONFIGS / name)
    assert isinstance(job, Job) and job.queries and job.model.preset in {"tiny", "demo"}
