"""constraints.txt is the full lock it says it is: every dependency of pyproject.toml (the node's and the train,
dev and bench extras') is pinned there, to a version its range allows, and torch to the CPU wheel CI uses."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_declared_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extras in project["optional-dependencies"].values():
        declared += extras
    pins = _pins()
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    assert pins["torch"] == Version("2.13.0")  # the CPU wheel on disk; a range would pull a CUDA build


def _declared() -> tuple[list[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [canonicalize_name(Requirement(t).name) for t in project["dependencies"]]
    extras = {
        k: [canonicalize_name(Requirement(t).name) for t in v] for k, v in project["optional-dependencies"].items()
    }
    return required, extras


def _readme_licences() -> dict[str, tuple[str, str]]:
    """README's dependency table: package → (licence cell, install cell)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Dependencies and licences") :]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("package", "---"):
            continue
        for name in cells[0].replace("*", "").replace("(", ",").replace(")", "").split(","):
            if name.strip():
                rows[canonicalize_name(name.strip().split(" ")[0])] = (cells[1], cells[3])
    return rows


def test_readme_licence_table_is_true():
    """Every dependency has a row; what is GPL or LGPL (by its installed metadata) says so there; the GPL codec is an
    extra, never a required dependency."""
    from importlib import metadata

    required, extras = _declared()
    rows = _readme_licences()
    for name in [*required, *(n for names in extras.values() for n in names)]:
        assert name in rows, f"{name} (pyproject.toml) has no row in README's dependency table"
        meta = metadata.metadata(name)
        short = meta.get("License") or ""  # some wheels put a whole licence text (of bundled libraries) here
        declared = " ".join(
            [
                meta.get("License-Expression") or "",
                short if len(short) < 200 else "",
                *(meta.get_all("Classifier") or []),
            ]
        )
        if "GPL" in declared:
            kind = "LGPL" if "LGPL" in declared or "Lesser" in declared else "GPL"
            assert kind in rows[name][0], f"{name} is {kind} by its metadata; README says {rows[name][0]!r}"
            assert name not in required, f"{name} is {kind}: it must be an optional extra, not a required dependency"
            assert "extra" in rows[name][1], rows[name]
    assert "pylibjpeg-libjpeg" in extras["jpeg-gpl"]


def test_everything_installed_lives_in_the_projects_namespace():
    """No plain `demo`, `trainer` or `harness` in site-packages: setuptools finds only dicom_denoise_node.*."""
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find["include"])
    assert {"denoise_trainer", "denoise_demo", "denoise_harness"} <= set(packages)
    assert all(p.split(".")[0] == "dicom_denoise_node" for p in packages), packages
    for entry in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"].values():
        assert all(target.startswith("dicom_denoise_node.") for target in entry.values()), entry
