"""`rsrs run --help`, `rsrs models` and job errors answer without importing the model stack (torch, transformers:
seconds to import) or the geospatial one: they must feel instant."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "rasterio", "distributed", "geopandas")

CHECK = """
import sys
from click.testing import CliRunner
from rsrs.workflows.cli import cli
result = CliRunner().invoke(cli, {args!r})
print(result.exit_code)
print(result.output.splitlines()[0] if result.output else "")
print(",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))))
"""


def run_cli_in_fresh_python(args: list[str]) -> tuple[int, str, set[str]]:
    """Exit code, first output line, and which heavy packages the command imported, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(args=args, heavy=HEAVY)], capture_output=True, text=True, timeout=120
    )
    code, first, imported = out.stdout.splitlines()[-3:]
    return int(code), first, set(filter(None, imported.split(",")))


@pytest.mark.parametrize("args", [["run", "--help"], ["models"], ["--help"], ["export", "--help"]])
def test_help_and_models_import_nothing_heavy(args):
    code, _, imported = run_cli_in_fresh_python(args)
    assert code == 0 and imported == set()


def test_a_job_error_is_reported_before_anything_heavy_is_imported(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [{geotiff: a.tif}]\nqueries: ['ponds']\ntilling: {tile_size: 512}\n")
    code, first, imported = run_cli_in_fresh_python(["run", str(job)])
    assert code == 1 and first == f"Error: unknown key 'tilling' in {job}; did you mean 'tiling'?"
    assert imported == set()


def test_a_missing_input_is_reported_before_torch_dask_and_the_writers_are_imported(tmp_path):
    """The model is checked (preset, query lengths) and the scenes opened with only GDAL of the heavy stack."""
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [{{geotiff: {tmp_path / 'absent.tif'}}}]\nqueries: ['ponds']\n")
    code, first, imported = run_cli_in_fresh_python(["run", str(job)])
    assert code == 1 and first.startswith("Error: no scene could be opened (raster not found:")
    assert imported == {"rasterio"}
