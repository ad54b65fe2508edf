"""The three installable parts as they ship: the node (pyproject.toml), the trainer (trainer/pyproject.toml) and the
harness with the demo (harness/pyproject.toml). constraints.txt is the full lock it says it is, README's licence
table is true for all three, each part installs only its own namespaced packages, and the node's wheel carries
neither the trainer, the demo nor the harness, nor their dependencies: a hospital node does not need them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]
PARTS = {"node": ROOT, "trainer": ROOT / "trainer", "harness": ROOT / "harness"}
# Each part's top-level import packages: namespaced, so that no plain `trainer`, `demo` or `harness` lands in
# site-packages beside other projects'.
OWN_PACKAGES = {
    "node": {"dicom_denoise_node"},
    "trainer": {"denoise_trainer"},
    "harness": {"denoise_harness", "denoise_demo"},
}
# What the node's wheel must not carry: the other parts' packages and the trainer's and harness's own modules.
NOT_IN_THE_NODE = {"denoise_trainer", "denoise_harness", "denoise_demo", "trainer", "harness", "demo", "phantom"}
TRAINER_ONLY = {"pytorch-msssim", "torchmetrics", "tensorboard", "scikit-image", "pywavelets", "monai"}


def _pyproject(part: str) -> dict[str, Any]:
    return tomllib.loads((PARTS[part] / "pyproject.toml").read_text())


def _own_distributions() -> dict[str, Version]:
    """The project's own distributions (they depend on each other by exact version) → their version."""
    return {
        canonicalize_name(_pyproject(p)["project"]["name"]): Version(_pyproject(p)["project"]["version"]) for p in PARTS
    }


def _requirements(part: str) -> dict[str, list[Requirement]]:
    """A part's requirements by where they are declared: "required" or the extra's name."""
    project = _pyproject(part)["project"]
    declared = {"required": [Requirement(t) for t in project["dependencies"]]}
    for extra, texts in project.get("optional-dependencies", {}).items():
        declared[extra] = [Requirement(t) for t in texts]
    return declared


def _third_party(part: str) -> dict[str, list[str]]:
    """A part's third-party dependencies (canonical names) by where they are declared."""
    own = _own_distributions()
    return {
        where: [canonicalize_name(r.name) for r in reqs if canonicalize_name(r.name) not in own]
        for where, reqs in _requirements(part).items()
    }


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_declared_dependency_is_pinned_inside_its_range(part: str) -> None:
    """Every dependency of the part (required and extras) is pinned, to a version its range allows; the parts
    require each other at the version they declare."""
    pins, own = _pins(), _own_distributions()
    for req in (r for reqs in _requirements(part).values() for r in reqs):
        name = canonicalize_name(req.name)
        if name in own:
            assert req.specifier.contains(own[name]), f"{part} requires {req}, but {name} is {own[name]}"
            continue
        assert name in pins, f"{req.name} ({part}'s pyproject.toml) has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    assert pins["torch"] == Version("2.13.0")  # the CPU wheel on disk; a range would pull a CUDA build


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


def _licence_text(name: str) -> str:
    """What a package's installed metadata says of its licence (some wheels put a whole licence text under
    License: only a short one counts)."""
    from importlib import metadata

    meta = metadata.metadata(name)
    short = meta.get("License") or ""
    return " ".join(
        [meta.get("License-Expression") or "", short if len(short) < 200 else "", *(meta.get_all("Classifier") or [])]
    )


@pytest.mark.parametrize("part", sorted(PARTS))
def test_readme_licence_table_is_true(part: str) -> None:
    """Every dependency of every part has a row saying which part (or extra) brings it; what is GPL or LGPL (by its
    installed metadata) says so there and is an optional extra (the node's or the trainer's), never required."""
    rows = _readme_licences()
    for where, names in _third_party(part).items():
        for name in names:
            assert name in rows, f"{name} ({part}'s pyproject.toml) has no row in README's dependency table"
            licence, install = rows[name]
            expected = [*([part] if part != "node" else []), f"extra `{where}`" if where != "required" else ""]
            if part == "node" and where == "required":
                expected = ["required"]
            assert all(e in install for e in expected), f"{name}: README says {install!r}, {part}: {where}"
            declared = _licence_text(name)
            if "GPL" in declared:
                kind = "LGPL" if "LGPL" in declared or "Lesser" in declared else "GPL"
                assert kind in licence, f"{name} is {kind} by its metadata; README says {licence!r}"
                assert where != "required", f"{name} is {kind}: it must be an optional extra"
    if part == "node":
        assert "pylibjpeg-libjpeg" in _third_party("node")["jpeg-gpl"]


@pytest.mark.parametrize("part", sorted(PARTS))
def test_each_part_installs_only_its_own_namespaced_packages(part: str) -> None:
    """setuptools' `find` of each part finds its own packages and nothing else, and the part's entry points lead
    into them; the trainer and the harness reach `denoise-node` through the `denoise_node.commands` group."""
    from setuptools import find_packages

    pyproject = _pyproject(part)
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(PARTS[part]), include=find["include"])
    assert {p.split(".")[0] for p in packages} == OWN_PACKAGES[part], packages
    project = pyproject["project"]
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    targets = [target for entries in groups.values() for target in entries.values()]
    assert targets, f"{part} declares no entry point"
    assert all(t.split(".")[0].split(":")[0] in OWN_PACKAGES[part] for t in targets), targets
    if part != "node":
        assert "denoise_node.commands" in project["entry-points"], project["entry-points"]


@pytest.mark.slow
def test_the_node_wheel_carries_only_the_node(tmp_path: Path) -> None:
    """`pip wheel .` of the node (built from a copy, so that no stale build/ of the source tree can hide or add
    files): only dicom_denoise_node/…, and none of the trainer's or harness's dependencies."""
    source = tmp_path / "source"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "demo-out", "runs")
    shutil.copytree(ROOT, source, ignore=junk)
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w"]
    subprocess.run([*command, str(wheels)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("dicom_denoise_node-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        (metadata,) = [n for n in files if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(metadata).decode())
        (entry_points,) = [n for n in files if n.endswith(".dist-info/entry_points.txt")]
        entry_text = archive.read(entry_points).decode()
    outside = [f for f in files if not f.startswith(("dicom_denoise_node/", "dicom_denoise_node-"))]
    assert outside == [], f"the node's wheel carries files outside dicom_denoise_node/: {outside[:10]}"
    foreign = [f for f in files if NOT_IN_THE_NODE & {Path(p).stem for p in Path(f).parts}]
    assert foreign == [], f"the node's wheel carries the trainer, demo or harness: {foreign[:10]}"
    assert "dicom_denoise_node/model/bundled/ACTIVE" in files  # the package data still ships
    required = {canonicalize_name(Requirement(r).name) for r in meta.get_all("Requires-Dist") or []}
    others = {*_third_party("trainer")["required"], *_third_party("harness").get("bench", [])} - {"pillow"}
    assert TRAINER_ONLY <= others  # the list above is what those parts really declare
    assert required & (others | TRAINER_ONLY) == set(), f"the node's wheel requires {required & others}"
    assert not required & {"dicom-denoise-trainer", "dicom-denoise-harness"}, required
    assert "denoise_node.commands" not in entry_text, entry_text
