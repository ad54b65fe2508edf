"""`make demo`: one synthetic low-dose CT study through the real node to a real PACS, then pictures and numbers.

The steps are the product's own flow, with real processes and real DICOM associations on loopback:

1. synthesise one patient (LD, HD and noise-free series; physically simulated dose, see
   ``denoise_trainer/archive/physics.py``);
2. start a PACS: Orthanc when installed (web explorer at the printed URL), else an in-process folder receiver;
3. start ``denoise-node serve`` with a config written next to the data and the bundled model;
4. send the LD series with dcmtk ``storescu`` (else pynetdicom);
5. follow the series through the node's catalog (received → complete → denoising k/N → sent);
6. fetch the derived series back from the PACS and compare LD and denoised against HD;
7. write ``montage.png`` and ``results.json``;
8. stop everything it started, also on Ctrl-C or SIGTERM.

Every failure names the step. Synthesis is cached between runs (same parameters → same files); the node's data
and the PACS storage are recreated on every run, so the demo re-runs without manual clean-up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import denoise_harness as peers
from denoise_demo.pacs import PACS_AET, DemoPACS, check_port, choose_pacs
from denoise_demo.report import (
    DemoResult,
    compare,
    load_volume,
    montage_inset,
    read_hu,
    slice_z,
    summarise_report,
    write_report,
)
from denoise_harness.node import NodeProcess
from dicom_denoise_node.denoise.quality_report import report_series_uid
from dicom_denoise_node.model.registry import read_metadata, resolve_model_path

log = logging.getLogger(__name__)

NODE_AET = "DENOISE"
SCANNER_AET = "SCANNER"


class DemoError(RuntimeError):
    """A demo step failed; the message names the step and the reason."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"demo step '{step}' failed: {reason}")
        self.step = step
        self.reason = reason


@dataclass
class DemoOptions:
    """What the demo does; the defaults are `make demo`'s."""

    out_dir: Path = Path("demo-out")
    slices: int = 24
    size: int = 512
    seed: int = 2026  # a patient that is not in the bundled model's training archive (seed 0)
    body_part: Literal["abdomen", "chest"] = "abdomen"
    pacs: Literal["auto", "orthanc", "folder"] = "auto"
    scu: Literal["auto", "storescu", "pynetdicom"] = "auto"
    model: str = ""  # empty: the bundled model
    device: str = "auto"
    node_port: int = 0  # 0: a free port
    pacs_port: int = 0
    http_port: int = 0
    timeout_s: float = 1800.0
    hold: bool = False  # the CLI keeps Orthanc up for the user (see on_ready)


# ------------------------------------------------------------------------------------------------ processes


class _Terminated(Exception):
    """SIGTERM/SIGHUP arrived: unwind like Ctrl-C so every finally block runs."""


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception in the main thread, and make sure SIGINT raises KeyboardInterrupt."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C always unwinds, even when the demo was started from a shell that ignores SIGINT for background jobs
    # (Python then never installs its KeyboardInterrupt handler).
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def step(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Time a step and turn its failure into a DemoError that names it."""
    started = time.monotonic()
    try:
        yield
    except (DemoError, KeyboardInterrupt, _Terminated):
        raise
    except Exception as exc:
        raise DemoError(name, f"{type(exc).__name__}: {exc}") from exc
    finally:
        timings[name] = round(time.monotonic() - started, 2)


# ------------------------------------------------------------------------------------------------ steps


def synthesise(options: DemoOptions, data_dir: Path, progress: Callable[[int, int], None] | None) -> Path:
    """One patient's LD/HD/REF series; reused when a previous run wrote the same parameters. Returns the patient dir."""
    from denoise_trainer.archive.synth import synthesize_archive

    params = {"slices": options.slices, "size": options.size, "seed": options.seed, "body_part": options.body_part}
    stamp = data_dir / "demo-params.json"
    patients = sorted(p for p in data_dir.glob("*/truth.json")) if data_dir.exists() else []
    if stamp.exists() and json.loads(stamp.read_text()) == params and len(patients) == 1:
        log.info("reusing the synthetic study in %s", data_dir)
        if progress is not None:
            progress(options.slices, options.slices)
        return patients[0].parent
    shutil.rmtree(data_dir, ignore_errors=True)
    records = synthesize_archive(
        data_dir,
        patients=1,
        slices=options.slices,
        size=options.size,
        seed=options.seed,
        body_parts=(options.body_part,),
        progress=progress,
    )
    stamp.write_text(json.dumps(params))
    return data_dir / records[0].patient_id


def demo_node(
    work: Path,
    data_dir: Path,
    port: int,
    pacs_port: int,
    model: str,
    device: str,
    quiet_period_s: float = 2.0,
    log_level: str = "INFO",
    compile: bool = False,
) -> NodeProcess:
    """The demo's (and the benchmarks') node: loopback only, everything under one folder, the node's defaults for
    tiles, free space and the quality report."""
    return NodeProcess(
        work,
        model,
        [{"ae_title": PACS_AET, "port": pacs_port, "name": "demo-pacs"}],
        data_dir=data_dir,
        port=port,
        ae_title=NODE_AET,
        device=device,
        compile=compile,
        tile=None,
        quiet_period_s=quiet_period_s,
        poll_interval_s=0.5,
        log_level=log_level,
        min_free_mb=None,
        backoff_s=1.0,
        backoff_max_s=None,
        send_timeout_s=60,
        report=None,
        header="# Written by `make demo`; every key is documented in etc/denoise-node.toml.\n",
    )


def send_series(files: list[Path], port: int, scu: str) -> str:
    """C-STORE the LD series to the node; returns which SCU sent it."""
    use_storescu = scu == "storescu" or (scu == "auto" and peers.find_program("storescu") is not None)
    if use_storescu:
        result = peers.storescu(files, port, NODE_AET, SCANNER_AET, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"storescu exited with {result.returncode}: {result.stderr.strip()[-500:]}")
        return "dcmtk storescu"
    from dicom_denoise_node.config import Destination
    from dicom_denoise_node.send.scu import send_files

    send_files(files, Destination(ae_title=NODE_AET, host=peers.LOOPBACK, port=port), SCANNER_AET, 120)
    return "pynetdicom"


@dataclass
class SeriesProgress:
    state: str = "waiting"
    received: int = 0
    slices_done: int = 0
    slices_total: int = 0
    derived_series_uid: str = ""
    derivation_key: str = ""
    processing_seconds: float | None = None
    last_error: str = ""


def read_progress(catalog_path: Path, series_uid: str) -> SeriesProgress:
    """The series as the node's catalog sees it (read-only; the node keeps writing)."""
    from sqlalchemy.exc import OperationalError

    from dicom_denoise_node.store.catalog import open_readonly

    if not catalog_path.exists():
        return SeriesProgress()
    catalog = open_readonly(f"sqlite:///{catalog_path}")
    try:
        row = catalog.views.series_progress(series_uid)
    except OperationalError:  # tables not created yet
        return SeriesProgress()
    finally:
        catalog.close()
    if row is None:
        return SeriesProgress()
    received = row.pop("instances")
    return SeriesProgress(received=received, **row)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ the run


def run_demo(
    options: DemoOptions, ui: DemoUI | None = None, on_ready: Callable[[DemoResult], None] | None = None
) -> DemoResult:
    """Run every step; whatever happens (error, Ctrl-C, SIGTERM), stop the node and the PACS before returning.

    ``on_ready`` is called with the result while the PACS still runs (the CLI shows it and may wait for the user).
    """
    ui = ui or DemoUI()
    out = options.out_dir.absolute()
    out.mkdir(parents=True, exist_ok=True)
    data_dir, node_dir, pacs_dir = out / "study", out / "node", out / "pacs"
    timings: dict[str, float] = {}
    node: NodeProcess | None = None
    pacs: DemoPACS | None = None
    with _signals_unwind():
        try:
            with step("check model", timings):
                resolve_model_path(options.model)  # before minutes of synthesis: the node would refuse to start
            with step("synthesise", timings):
                ui.stage("synthesise", options.slices)
                patient_dir = synthesise(options, data_dir, lambda k, n: ui.advance("synthesise", k, n))
                truth = json.loads((patient_dir / "truth.json").read_text())
                ld_files = sorted((patient_dir / "LD").glob("*.dcm"))
                ld_uid = truth["series_instance_uids"]["LD"]
            # A fresh node and PACS every run: the derived UIDs are deterministic, so an old catalog would say SENT.
            for d in (node_dir, pacs_dir):
                shutil.rmtree(d, ignore_errors=True)
            with step("start PACS", timings):
                pacs = DemoPACS(choose_pacs(options.pacs), pacs_dir, options.pacs_port, options.http_port)
                pacs.start()
                ui.note(f"PACS: {pacs.name} on {peers.LOOPBACK}:{pacs.dicom_port}")
            with step("start node", timings):
                node_port = options.node_port or peers.free_port()
                check_port(node_port, "node")
                node_dir.mkdir(parents=True)
                node = demo_node(out, node_dir, node_port, pacs.dicom_port, options.model, options.device)
                try:
                    node.start(timeout=180.0)
                except RuntimeError as exc:
                    raise DemoError("start node", str(exc)) from exc
                ui.note(f"node: denoise-node serve --config {node.config} (log {node.log_path})")
            with step("send LD series", timings):
                scu = send_series(ld_files, node_port, options.scu)
            with step("wait for derived series", timings):
                progress = follow(node, pacs, node_dir / "catalog.sqlite", ld_uid, len(ld_files), options, ui)
            with step("report", timings):
                result = _result(options, out, patient_dir, truth, pacs, progress, scu, timings)
                write_report(result, out / "results.json")
            if on_ready is not None:
                node.stop()  # its work is done; only the PACS stays up for the user
                on_ready(result)
            return result
        finally:
            if node is not None:
                node.stop()
            if pacs is not None:
                pacs.stop()


def _result(
    options: DemoOptions,
    out: Path,
    patient_dir: Path,
    truth: dict[str, Any],
    pacs: DemoPACS,
    progress: SeriesProgress,
    scu: str,
    timings: dict[str, float],
) -> DemoResult:
    """What came back: the derived series against LD, HD and the noise-free REF, a montage and the node's report."""
    from denoise_trainer.evaluate.montage import save_montage

    ld_uid = truth["series_instance_uids"]["LD"]
    derived = {slice_z(ds): read_hu(ds) for ds in pacs.datasets(progress.derived_series_uid)}
    ld, hd, ref = (load_volume(patient_dir / k) for k in ("LD", "HD", "REF"))
    info = read_metadata(resolve_model_path(options.model))
    metrics = compare(ld, derived, hd, ref, (info.hu_min, info.hu_max))
    z, inset = montage_inset(truth, sorted(derived), derived[next(iter(derived))].shape)
    montage = out / "montage.png"
    save_montage(
        montage,
        {"LD": ld[z], "denoised": derived[z], "HD": hd[z], "noise-free": ref[z]},
        inset=inset,
    )
    result = DemoResult(
        series_uid=ld_uid,
        derived_series_uid=progress.derived_series_uid,
        slices=len(derived),
        pacs=pacs.name,
        scu=scu,
        derivation_key=progress.derivation_key,
        seconds_per_slice=(progress.processing_seconds or math.nan) / max(1, len(derived)),
        wall_seconds=timings,
        metrics=metrics,
        montage=str(montage),
        pacs_url=pacs.url,
        report=summarise_report(pacs.datasets(report_series_uid(ld_uid, progress.derivation_key))),
    )
    return result


def follow(
    node: NodeProcess,
    pacs: DemoPACS,
    catalog: Path,
    series_uid: str,
    expected: int,
    options: DemoOptions,
    ui: DemoUI,
) -> SeriesProgress:
    """Poll the node's catalog and the PACS until the derived series is stored in full (bounded by timeout_s)."""
    deadline = time.monotonic() + options.timeout_s
    progress = SeriesProgress()
    while time.monotonic() < deadline:
        if not node.alive():
            raise DemoError("wait for derived series", f"the node exited; last log lines:\n{node.log_tail()}")
        progress = read_progress(catalog, series_uid)
        if progress.state == "FAILED":
            raise DemoError("wait for derived series", f"the node failed the series: {progress.last_error}")
        stored = pacs.count(progress.derived_series_uid) if progress.derived_series_uid else 0
        ui.series(progress, expected, stored)
        if progress.state == "SENT" and stored >= progress.slices_total > 0:
            return progress
        time.sleep(0.3)
    raise DemoError(
        "wait for derived series",
        f"not done after {options.timeout_s:.0f} s (state {progress.state}); last log lines:\n{node.log_tail()}",
    )


class DemoUI:
    """Where the demo reports progress; the CLI subclasses it with rich progress bars. Silent by default."""

    def stage(self, name: str, total: int) -> None:
        """A step with a known number of items begins."""

    def advance(self, name: str, done: int, total: int) -> None:
        """Items done in a step."""

    def note(self, text: str) -> None:
        """A line worth showing (ports, URLs, log files)."""
        log.info("%s", text)

    def series(self, progress: SeriesProgress, expected: int, stored: int) -> None:
        """The node's view of the series, and how much of the derived series the PACS holds."""
