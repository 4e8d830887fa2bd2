"""A non-editable install gives a working ``rsrs`` with its presets (configs/ shipped as package data)."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    return next(out.glob("rsrs-*.whl"))


def test_wheel_holds_the_three_layers_and_the_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"rsrs/core/errors.py", "rsrs/model/rsrefseg/model.py", "rsrs/model/rsrefseg2/model.py"} <= names
    assert {"rsrs/pipeline/geometry.py", "rsrs/workflows/cli.py"} <= names
    assert {"rsrs/configs/models/tiny.yaml", "rsrs/configs/models/rsrefseg-b.yaml"} <= names
    shipped_demo = {"models/demo.safetensors", "jobs/demo.yaml", "demo/scene.tif"}
    assert {f"rsrs/configs/{name}" for name in shipped_demo} <= names
    assert not any(n.startswith(("model/", "pipeline/", "workflows/", "tests/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "rsrs = rsrs.workflows.cli:main" in entry_points


def _venv_seeing_our_packages(env_dir: Path) -> Path:
    """A fresh venv that imports what this interpreter imports (torch, ...) but not this checkout; its python.

    ``system_site_packages=True`` would show the *base* interpreter's packages, not those of the venv pytest may
    run in. So a .pth file lists every folder on our ``sys.path`` instead: plain lines do not run the .pth files
    inside those folders, so this checkout's editable install (a .pth import hook) stays out.
    """
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = [p for p in sys.path if p and Path(p).is_dir() and Path(p).resolve() != ROOT]
    (Path(site_packages) / "outer.pth").write_text("\n".join(ours) + "\n")
    return python


def test_non_editable_install_in_a_fresh_venv_gives_a_working_rsrs(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    python = _venv_seeing_our_packages(env_dir)
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    # Run from an empty folder so nothing resolves to the source tree.
    where = subprocess.run(
        [
            python,
            "-c",
            "import rsrs.model, rsrs.configs; print(rsrs.model.__file__); print(rsrs.configs.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(str(env_dir) in line for line in where.splitlines()), where
    out = subprocess.run([env_dir / "bin" / "rsrs", "models"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "tiny" in out.stdout and "969,006,482 total" in out.stdout
