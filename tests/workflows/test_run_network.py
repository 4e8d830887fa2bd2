"""Flaky inputs: a file server that answers 503, resets connections or stalls on the first try of every request,
and a STAC API that does the same while paging through 1,200 items. Transient failures are retried (the job's
`network:` settings), a scene whose server keeps failing is skipped and recorded, and an API that keeps failing is
one line."""

import json
import shutil

import pytest
from click.testing import CliRunner

from rsrs.pipeline.network import HttpOptions
from rsrs.pipeline.stac import StacApiError, load_items
from rsrs.workflows.cli import cli
from rsrs.workflows.run import run_job
from tests.servers import flaky_file_server, flaky_proxy, free_port, rustac_api, rustac_available
from tests.workflows.runs import assert_same_outputs, message_lines, write_job

SCENES = {"a": (64, 96), "b": (72, 72)}
FAST = {"retries": 2, "retry_delay_s": 0.05, "timeout_s": 1.0}  # a stall of 3 s times out after 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scheduler):
    """The scenes, and the outputs of a run that reads them from local files."""
    job = write_job(tmp_path_factory.mktemp("local"), scenes=SCENES)
    run_job(job, scheduler=scheduler)
    return job.parent


FAULTS = [
    pytest.param({"mode": "status", "status": 503}, id="503"),
    pytest.param({"mode": "reset"}, id="reset", marks=pytest.mark.slow),
    pytest.param({"mode": "stall", "stall_s": 3}, id="stall", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("fault", FAULTS)
def test_reads_that_fail_once_are_retried_and_a_scene_that_always_fails_is_skipped(
    tmp_path, reference, scheduler, fault
):
    served = tmp_path / "served"
    served.mkdir()
    for name, source in (("a", "a"), ("b", "b"), ("dead", "a")):
        shutil.copy(reference / "data" / f"{source}.tif", served / f"{name}.tif")
    with flaky_file_server(served, first=1, dead="dead", **fault) as url:
        inputs = [{"geotiff": f"{url}/{name}.tif"} for name in ("a", "b", "dead")]
        report = run_job(write_job(tmp_path, scenes={}, inputs=inputs, network=FAST), scheduler=scheduler)
    status = {s["source"].rsplit("/", 1)[-1]: s for s in report["scenes"]}
    assert status["a.tif"]["status"] == status["b.tif"]["status"] == "done"
    assert status["dead.tif"]["status"] == "failed"
    assert "HTTP response code: 503 (after 2 retries)" in status["dead.tif"]["error"]
    assert_same_outputs(tmp_path / "out", reference / "out")  # every read that failed once was retried


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """1,200 STAC items (their asset is never opened here)."""
    if not rustac_available():
        pytest.skip("rustac is not installed")
    feature = {
        "type": "Feature", "stac_version": "1.0.0", "collection": "c",
        "geometry": {"type": "Polygon", "coordinates": [[[-99, 37], [-98, 37], [-98, 38], [-99, 38], [-99, 37]]]},
        "bbox": [-99, 37, -98, 38], "properties": {"datetime": "2021-06-01T00:00:00Z"}, "links": [],
        "assets": {"image": {"href": "/nowhere/a.tif", "type": "image/tiff"}},
    }  # fmt: skip
    path = tmp_path_factory.mktemp("stac") / "items.json"
    features = [feature | {"id": f"item-{i:04d}"} for i in range(1200)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture
def api(items, request):
    """rustac behind a flaky proxy with the faults ``request.param`` (its links name the proxy, so every page of a
    search goes through the faults)."""
    port = free_port()
    with flaky_proxy(f"http://127.0.0.1:{port}", **request.param) as url, rustac_api(items, port=port, public_url=url):
        yield url


@pytest.mark.parametrize(
    ("api", "count"),
    [({"mode": "status", "status": 500, "first": 1}, 1200), ({"mode": "stall", "stall_s": 3, "first": 1}, 300)],
    indirect=["api"],
)
def test_a_stac_api_failing_each_request_once_is_retried_through_all_pages(api, count):
    """Every request (each page too: 100 items a page) fails once; a stall costs a timeout, so fewer pages there."""
    found = load_items(api=api, collections=["c"], max_items=count, http=HttpOptions(**FAST))
    assert sorted(item.id for item in found) == [f"item-{i:04d}" for i in range(count)]


@pytest.mark.parametrize(
    ("api", "said"),
    [
        ({"mode": "status", "status": 500, "dead": "/"}, "answered with HTTP 500 .* 2 retries"),
        ({"mode": "stall", "stall_s": 3, "first": 99}, r"did not answer within 1 s \(2 retries\)"),
    ],
    indirect=["api"],
)
def test_a_stac_api_that_keeps_failing_is_one_line(api, said, tmp_path):
    with pytest.raises(StacApiError, match=said):
        load_items(api=api, collections=["c"], http=HttpOptions(**FAST))
    job = write_job(tmp_path, scenes={}, inputs=[{"stac": {"api": api, "collections": ["c"]}}], network=FAST)
    result = CliRunner().invoke(cli, ["run", str(job)])
    (line,) = message_lines(result.output)
    assert result.exit_code == 1 and line.startswith("Error: no scene could be opened (STAC API "), line
