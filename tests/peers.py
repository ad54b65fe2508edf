"""Real DICOM peers for tests: dcmtk storescp/storescu/echoscu, Orthanc (from ``harness``) and dciodvfy, as fixtures.

Everything talks DIMSE over 127.0.0.1 only. Fixtures skip the test when their peer is not installed
(``make test`` installs them). Fixtures are found by name in the test module; binding them there keeps ruff
quiet (a parameter named like an imported fixture is F811)::

    from tests import peers

    dcmtk_pacs = peers.dcmtk_pacs
    orthanc_pacs = peers.orthanc_pacs
"""

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

import denoise_harness as _peers
from denoise_harness import (  # noqa: F401  (re-exported for the tests)
    LOOPBACK,
    Modality,
    Orthanc,
    OrthancHTTPError,
    PeakWatch,
    PeerMissing,
    PostgresServer,
    StoreSCP,
    StrPath,
    echoscu,
    file_syntax_profile,
    find_program,
    free_port,
    j2k_noise_slice,
    listens,
    peer_env,
    pid_alive,
    port_open,
    sop_instance_uid,
    stop_process,
    storescu,
    wait_for_port,
    wait_until,
    write_ct_series,
)


def require(binary: str) -> str:
    """Return the full path of ``binary``; when it is not installed, skip the calling test, except under ``CI=true``
    where a missing peer fails it (CI must never pass by testing less)."""
    try:
        return _peers.require(binary)
    except _peers.PeerMissing as exc:
        missing(exc)


def missing(exc: PeerMissing) -> NoReturn:
    """Skip the calling test for a missing peer, or fail it under ``CI=true``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and a peer is missing: {exc}")
    pytest.skip(str(exc))


# ----------------------------------------------------------------------------------------- test data


def dciodvfy(path: StrPath) -> tuple[list[str], list[str]]:
    """Run dicom3tools ``dciodvfy`` on a file; return its ``(errors, warnings)`` lines (skips if missing)."""
    exe = require("dciodvfy")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stderr + "\n" + result.stdout).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def make_pki(directory: Path, server_ip: str = LOOPBACK) -> Path:
    """A throwaway CA (``ca.pem``), a server certificate for ``server_ip`` (``server.pem``/``.key``) and a client
    certificate (``client.pem``/``.key``) it signed, made with openssl in ``directory``."""

    def openssl(*args: str) -> None:
        subprocess.run([require("openssl"), *args], cwd=directory, check=True, capture_output=True, timeout=60)

    directory.mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", f"/CN=test CA {directory.name}")  # fmt: skip
    for name, ext in (("server", f"subjectAltName=IP:{server_ip}"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        (directory / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return directory


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (:func:`make_pki`)."""
    return make_pki(tmp_path / "pki")


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Start :class:`StoreSCP` peers (``factory(ae_title="PACS2", ...)``); all are stopped on teardown."""
    require("storescp")
    with contextlib.ExitStack() as stack:
        count = 0

        def make(
            ae_title: str = "PACS", port: int | None = None, extra_args: Sequence[str] = (), **kwargs: Any
        ) -> StoreSCP:
            nonlocal count
            count += 1
            scp = StoreSCP(tmp_path / f"storescp{count}", ae_title, port, extra_args, **kwargs)
            stack.callback(scp.stop)
            scp.start()
            return scp

        yield make


@pytest.fixture
def dcmtk_pacs(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    """A running dcmtk storescp with AE title ``PACS`` on a free loopback port."""
    return storescp_factory("PACS")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start :class:`Orthanc` peers (``factory(modalities={...}, aet=...)``, ``dicomweb=True`` for STOW-RS); all are
    stopped on teardown."""
    require("Orthanc")
    with contextlib.ExitStack() as stack:
        count = 0

        def make(modalities: Mapping[str, Modality] | None = None, **kwargs: Any) -> Orthanc:
            nonlocal count
            count += 1
            try:
                orthanc = Orthanc(tmp_path / f"orthanc{count}", modalities, **kwargs)
            except PeerMissing as exc:  # an optional part of it: the DICOMweb plugin
                missing(exc)
            stack.callback(orthanc.stop)
            orthanc.start()
            return orthanc

        yield make


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the test session (harness/postgres.py); each test makes its database."""
    try:
        server = PostgresServer().start()
    except PeerMissing as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and a peer is missing: {exc}")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new empty database on the session's PostgreSQL server: its SQLAlchemy URL."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The catalog's URL on each backend: a SQLite file (the embedded default) and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def orthanc_pacs(request: pytest.FixtureRequest, orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """A running Orthanc (AET ``ORTHANC``); modalities from indirect parametrization, if any."""
    return orthanc_factory(getattr(request, "param", None))
