"""A clean install is what CI tests: every import is declared, and CI runs the README's own commands."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _package_folders() -> list[str]:
    """The folders that install as rsrs.* (setuptools package-dir), so a new one is checked without a test edit."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return sorted(set(config["tool"]["setuptools"]["package-dir"].values()))


def _deptry(root: Path) -> str:
    """deptry's report over the package folders under ``root``; raises when it finds an issue."""
    result = subprocess.run(
        [sys.executable, "-m", "deptry", *_package_folders(), "--config", str(ROOT / "pyproject.toml"), "--no-ansi"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    report = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(report)
    return report


def test_every_import_of_the_package_is_declared_and_every_dependency_used():
    """deptry: no missing (DEP001), unused (DEP002), transitive-only (DEP003) or test-only (DEP004) imports."""
    assert _package_folders() == ["configs", "core", "model", "pipeline", "workflows"]
    _deptry(ROOT)


def test_the_check_fails_on_an_undeclared_import(tmp_path):
    for folder in _package_folders():
        for source in (ROOT / folder).rglob("*.py"):
            copy = tmp_path / source.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(source.read_text())
    _deptry(tmp_path)  # the copy alone passes
    module = tmp_path / "pipeline" / "polygons.py"
    module.write_text(module.read_text() + "\nimport something_undeclared  # noqa: E402\n")
    with pytest.raises(AssertionError, match="DEP001 'something_undeclared' imported but missing") as failed:
        _deptry(tmp_path)
    assert "Found 1 dependency issue" in str(failed.value)


def _readme_command(heading: str) -> str:
    """The one-line command in the bash block under the README heading that starts with ``heading``."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(heading)}.*?```bash\n(.*?)\n```", readme, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, f"README has no bash block under '## {heading}'"
    return match.group(1).strip()


def test_ci_runs_the_readme_set_up_and_test_commands_in_a_fresh_venv():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    venv_at = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv "))
    activate_at = next(i for i, line in enumerate(lines) if line.startswith(". ") and "/bin/activate" in line)
    set_up_at = lines.index(_readme_command("Set-up"))
    test_at = next(i for i, line in enumerate(lines) if line.startswith(_readme_command("Tests")))
    assert venv_at < activate_at < set_up_at < test_at
