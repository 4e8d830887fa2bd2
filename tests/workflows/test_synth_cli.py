"""`rsrs synth dataset|scene`: same seed, same bytes in every file; another seed, other bytes."""

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rsrs.workflows.cli import cli


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def synth(*args: str) -> None:
    result = CliRunner().invoke(cli, ["synth", *args])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "command",
    [["dataset", "--count", "8", "--chip-size", "64"], ["scene", "--size", "300"]],
    ids=["dataset", "scene"],
)
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, command):
    synth(command[0], str(tmp_path / "a"), *command[1:], "--seed", "5")
    synth(command[0], str(tmp_path / "b"), *command[1:], "--seed", "5")
    synth(command[0], str(tmp_path / "c"), *command[1:], "--seed", "6")
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert a == b and len(a) > 3
    image = "images/000000.png" if command[0] == "dataset" else "scene.tif"
    assert a[image] != c[image]


def test_help_explains_the_outputs():
    result = CliRunner().invoke(cli, ["synth", "scene", "--help"])
    assert result.exit_code == 0
    assert "expressions.json" in result.output and "EPSG:32614" in result.output
    result = CliRunner().invoke(cli, ["synth", "dataset", "--help"])
    assert "manifest.jsonl" in result.output and "--chip-size" in result.output


def test_scene_wide_dataset_draws_the_same_chips_and_adds_plural_and_absent_samples(tmp_path):
    synth("dataset", str(tmp_path / "plain"), "--count", "40", "--chip-size", "96", "--seed", "3")
    synth("dataset", str(tmp_path / "wide"), "--count", "40", "--chip-size", "96", "--seed", "3", "--scene-wide")
    plain, wide = digests(tmp_path / "plain"), digests(tmp_path / "wide")
    images = [k for k in wide if k.startswith("images/")]
    assert images and all(plain.get(k) == wide[k] for k in images if k in plain)
    rows = [json.loads(line) for line in (tmp_path / "wide" / "manifest.jsonl").read_text().splitlines()]
    forms = {r["form"] for r in rows}
    assert {"plural", "absent"} <= forms
    assert all(("targets" in r) == (r["form"] in ("plural", "absent")) for r in rows)
    plain_rows = (tmp_path / "plain" / "manifest.jsonl").read_text()
    assert '"plural"' not in plain_rows and '"absent"' not in plain_rows
