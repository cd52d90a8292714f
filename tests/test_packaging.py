"""The project's own files agree with each other: pins, README settings, layout."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, ver = line.split("==")
            out[name.strip().lower()] = ver.strip()
    return out


def test_pyproject_pins_match_requirement_files():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    def pins(items):
        return {i.split("==")[0].lower(): i.split("==")[1] for i in items}
    assert pins(py["dependencies"]) == _pins(ROOT / "requirements/runtime.txt")
    build = _pins(ROOT / "requirements/build.txt")
    assert pins(py["optional-dependencies"]["build"]) == build
    assert build["torch"] == "2.13.0", "torch must stay pinned to the CPU build on disk"
    assert pins(py["optional-dependencies"]["dev"]) == _pins(ROOT / "requirements/dev.txt")


def test_runtime_requirements_have_no_build_only_packages():
    runtime = _pins(ROOT / "requirements/runtime.txt")
    for pkg in ("torch", "transformers", "sentence-transformers"):
        assert pkg not in runtime


def test_every_setting_is_documented_in_readme():
    from app.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [f.upper() for f in Settings.model_fields if f"`{f.upper()}`" not in readme]
    assert not missing, f"settings missing from README: {missing}"


def test_layout():
    for d in ("app", "models", "index", "docker", "tests", "locustfiles", "bench", ".ci"):
        assert (ROOT / d).is_dir(), d
    for f in ("pyproject.toml", "Makefile", "README.md", ".ci/run"):
        assert (ROOT / f).is_file(), f
    assert re.search(r"^\s*make test\s*$", (ROOT / ".ci/run").read_text(), re.M)
