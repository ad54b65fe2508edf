"""Synthetic CT archive: per patient one study with HD, LD (quarter dose) and REF (noise-free) series.

Why: tests, demos and training need paired LD/HD CT with known truth and no patient data. Anatomy comes
from ``archive/phantom``, dose from ``archive/physics.py`` (Poisson counts on projections, then FBP: never
image-domain noise), the scan protocol from ``archive/protocol.py`` and the DICOM from ``archive/synthetic_dicom.py``.
Everything (pixels, UIDs, dates, names) is a deterministic function of the seed, except the timing in the manifest.

Layout: OUT/<PatientID>/<HD|LD|REF>/0001.dcm …, OUT/<PatientID>/truth.json, OUT/archive.json.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from denoise_trainer.archive import fanbeam, physics
from denoise_trainer.archive.phantom import PatientAnatomy, make_patient, render_slice
from denoise_trainer.archive.protocol import FOV_MM, Acquisition, draw_acquisition, series_specs
from denoise_trainer.archive.span import PROTOCOL_RANGES, ScanProtocol, draw_protocol
from denoise_trainer.archive.synthetic_dicom import patient_header, slice_dataset, synthetic_uid
from dicom_denoise_node.denoise.decode import file_hu

log = logging.getLogger(__name__)

OOD_SALT = 28  # the out-of-distribution archive's patients come from other seed streams than any other archive's


@dataclass
class PatientRecord:
    """What was written for one patient (enough to find the files and their truth)."""

    patient_id: str
    body_part: str
    directory: Path
    study_instance_uid: str
    frame_of_reference_uid: str
    series_instance_uids: dict[str, str]
    slices: int
    lesions: int
    truth_path: Path
    slice_positions_mm: list[float] = field(default_factory=list)


def _lesion_json(lesion: object) -> dict[str, object]:
    def rounded(v: object) -> object:
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, tuple | list):
            return [rounded(x) for x in v]
        return v

    return {k: rounded(v) for k, v in asdict(lesion).items()}  # type: ignore[call-overload]


def _body_parts(rng: np.random.Generator, patients: int, body_parts: Sequence[str]) -> list[str]:
    """Alternate body parts from a seeded start, so any two consecutive patients differ."""
    start = int(rng.integers(len(body_parts)))
    return [body_parts[(start + i) % len(body_parts)] for i in range(patients)]


def _patient_seeds(seed: int, index: int, span: str | None = None) -> list[np.random.SeedSequence]:
    """Independent streams for anatomy, noise, header and acquisition of one patient (changing one leaves the
    others; the fourth is used only by ``vary`` and ``span``, so archives made without them are unchanged).
    The out-of-distribution archive salts them: other patients than any archive made with the same seed."""
    return np.random.SeedSequence([seed, index, OOD_SALT] if span == "ood" else [seed, index]).spawn(4)


def patient_anatomy(
    seed: int,
    index: int,
    body_part: str,
    z_positions_mm: Sequence[float],
    protocol: Acquisition | None = None,
    span: str | None = None,
) -> PatientAnatomy:
    """The anatomy synthesize_archive used for patient `index` (0-based), e.g. for organ masks in scoring; pass
    the patient's protocol and the archive's span ("span", "ood") for archives made with them."""
    rng = np.random.default_rng(_patient_seeds(seed, index, span)[0])
    extent = (min(z_positions_mm), max(z_positions_mm))
    if not isinstance(protocol, ScanProtocol):
        return make_patient(rng, body_part, extent)
    return make_patient(rng, body_part, z_extent_mm=extent, detail=protocol.detail, size_scale=protocol.size_scale)


def synthesize_archive(
    out_dir: Path,
    patients: int,
    slices: int,
    size: int = 512,
    seed: int = 0,
    body_parts: Sequence[str] = ("chest", "abdomen"),
    slice_thickness_mm: float = 3.0,
    views: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    pixel_spacing_mm: float | None = None,
    i0_hd: float = physics.DEFAULT_I0_HD,
    ld_fraction: float = 0.25,
    electronic_noise: float = physics.DEFAULT_ELECTRONIC_NOISE,
    window: str = "shepp-logan",
    device: physics.Device = "cpu",
    vary: bool = False,
    span: str | None = None,
) -> list[PatientRecord]:
    """Write a reproducible archive of `patients` studies × `slices` axial slices (HD, LD, REF series each).

    pixel_spacing_mm defaults to a ~358 mm field of view at any size (0.7 mm at 512). progress(done, total)
    is called after each slice position. ``vary`` draws each patient's dose, LD fraction, kernel, field of view
    and detector noise (``draw_acquisition``) instead of using the arguments. ``span`` ("span" or "ood", see
    archive/span.py) draws each patient's kernel, geometry, pixel size, size, dose and noise level from the
    training span or from outside it (other patients, UIDs and IDs too).
    """
    if span is not None and (vary or span not in PROTOCOL_RANGES):
        raise ValueError(f"span must be one of {sorted(PROTOCOL_RANGES)}, and not combined with vary; got {span!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    default = Acquisition(i0_hd, ld_fraction, window, pixel_spacing_mm or FOV_MM / size, electronic_noise)
    root = np.random.SeedSequence([seed])
    parts = _body_parts(np.random.default_rng(root.spawn(1)[0]), patients, list(body_parts))
    half = (slices - 1) / 2.0
    z_positions = [round((half - i) * slice_thickness_mm, 4) for i in range(slices)]  # superior first
    run = _Run(out_dir, seed, size, slice_thickness_mm, views, device, z_positions, patients * slices, progress, span)
    records: list[PatientRecord] = []
    acquisitions: list[Acquisition] = []
    for index, body_part in enumerate(parts):
        acq = _acquisition(run, index, body_part, default, vary)
        acquisitions.append(acq)
        records.append(_write_patient(run, index, body_part, acq))
    manifest = _manifest(run, default, vary, records, acquisitions)
    (out_dir / "archive.json").write_text(json.dumps(manifest, indent=2))
    log.info(
        "synthetic archive in %s: %d patients × %d slices, %.2f s per slice (3 reconstructions)",
        out_dir,
        patients,
        slices,
        manifest["seconds_per_slice"],
    )
    return records


@dataclass
class _Run:
    """What every patient of one archive shares, and the running count of slice positions and simulation time."""

    out_dir: Path
    seed: int
    size: int
    thickness_mm: float
    views: int | None
    device: physics.Device
    z_positions: list[float]
    total: int
    progress: Callable[[int, int], None] | None
    span: str | None = None
    done: int = 0
    sim_seconds: float = 0.0

    @property
    def uid_seed(self) -> str:
        """What UIDs derive from: the seed, and for span archives their kind (never another archive's UIDs)."""
        return str(self.seed) if self.span is None else f"{self.span}-{self.seed}"


def _acquisition(run: _Run, index: int, body_part: str, default: Acquisition, vary: bool) -> Acquisition:
    """Patient `index`'s acquisition: the arguments', drawn by ``vary``, or drawn from the span's ranges."""
    seq = _patient_seeds(run.seed, index, run.span)[3]
    if run.span is not None:
        return draw_protocol(seq, run.size, run.views, PROTOCOL_RANGES[run.span], body_part)
    return draw_acquisition(seq, run.size) if vary else default


def _scan(run: _Run, acq: Acquisition, hu: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """REF, HD and LD images of one slice in the acquisition's geometry (parallel, or a fan rebinned)."""
    doses = {"HD": acq.i0_hd, "LD": acq.i0_hd * acq.ld_fraction}
    options = dict(pixel_spacing=acq.pixel_spacing_mm, views=run.views, electronic_noise=acq.electronic_noise)
    geometry = getattr(acq, "geometry", "parallel")
    t0 = time.perf_counter()
    if geometry == "parallel":
        images = physics.simulate_doses(hu, doses, rng, window=acq.window, device=run.device, **options)
    else:
        fan = fanbeam.FAN_GEOMETRIES[geometry]
        images = fanbeam.simulate_doses_fan(
            hu, doses, rng, geometry=fan, window=acq.window, device=run.device, **options
        )
    run.sim_seconds += time.perf_counter() - t0
    return images


def _write_patient(run: _Run, index: int, body_part: str, acq: Acquisition) -> PatientRecord:
    """One patient's study: HD, LD and REF series over every slice position, and its truth.json."""
    _, noise_seq, header_seq, _ = _patient_seeds(run.seed, index, run.span)
    spacing, window = acq.pixel_spacing_mm, acq.window
    specs = series_specs(acq.ld_fraction, acq.hd_mas)
    anatomy = patient_anatomy(run.seed, index, body_part, run.z_positions, acq, run.span)
    noise_rng = np.random.default_rng(noise_seq)
    header = patient_header(np.random.default_rng(header_seq), index, body_part, ood=run.span == "ood")
    pid, useed = header.PatientID, run.uid_seed
    study_uid, frame_uid = synthetic_uid(useed, pid, "study"), synthetic_uid(useed, pid, "frame")
    series_uids = {kind: synthetic_uid(useed, pid, "series", kind) for kind in specs}
    fan = fanbeam.FAN_GEOMETRIES.get(getattr(acq, "geometry", "parallel"))
    patient_dir = run.out_dir / pid
    for kind in specs:
        (patient_dir / kind).mkdir(parents=True, exist_ok=True)
    slice_truth: list[dict[str, object]] = []
    sop_uids: dict[str, list[str]] = {kind: [] for kind in specs}
    for i, z in enumerate(run.z_positions):
        hu, lesions = render_slice(anatomy, z, run.size, spacing)
        images = _scan(run, acq, hu, noise_rng)
        for kind, spec in specs.items():
            ds = slice_dataset(
                header,
                spec,
                images[kind],
                seed=useed,
                instance=i + 1,
                z_mm=z,
                pixel_spacing=spacing,
                thickness=run.thickness_mm,
                study_uid=study_uid,
                series_uid=series_uids[kind],
                frame_uid=frame_uid,
                body_part=body_part,
                window=window,
                fan=fan,
            )
            ds.save_as(patient_dir / kind / f"{i + 1:04d}.dcm", enforce_file_format=True)
            sop_uids[kind].append(ds.SOPInstanceUID)
        slice_truth.append({"slice_index": i + 1, "z_mm": z, "lesions": [_lesion_json(les) for les in lesions]})
        run.done += 1
        if run.progress is not None:
            run.progress(run.done, run.total)
    truth_path = patient_dir / "truth.json"
    uids = {"study": study_uid, "frame": frame_uid, "series": series_uids, "sop": sop_uids}
    _write_truth(truth_path, header, anatomy, spacing, run, uids, slice_truth)
    slices, lesions = len(run.z_positions), len(anatomy.lesions)
    log.info("synthetic patient %s (%s): %d slices, %d lesions", pid, body_part, slices, lesions)
    return PatientRecord(
        patient_id=pid,
        body_part=body_part,
        directory=patient_dir,
        study_instance_uid=study_uid,
        frame_of_reference_uid=frame_uid,
        series_instance_uids=series_uids,
        slices=slices,
        lesions=lesions,
        truth_path=truth_path,
        slice_positions_mm=list(run.z_positions),
    )


def _manifest(
    run: _Run, default: Acquisition, vary: bool, records: list[PatientRecord], acquisitions: list[Acquisition]
) -> dict[str, object]:
    """archive.json: how the archive was made (the default acquisition, and each patient's own)."""
    manifest: dict[str, object] = {
        "generator": "trainer.synth",
        "seed": run.seed,
        "patients": len(records),
        "slices": len(run.z_positions),
        "size": run.size,
        "varied": vary,
        "pixel_spacing_mm": default.pixel_spacing_mm,
        "slice_thickness_mm": run.thickness_mm,
        "views": run.views or physics.default_views(run.size),
        "detector_bins": physics.detector_bins(run.size),
        "i0": {"HD": default.i0_hd, "LD": default.i0_hd * default.ld_fraction},
        "mas": {k: s.mas for k, s in series_specs(default.ld_fraction, default.hd_mas).items()},
        "electronic_noise_counts": default.electronic_noise,
        "fbp_window": default.window,
        "mu_water_per_mm": physics.MU_WATER_PER_MM,
        "seconds_per_slice": round(run.sim_seconds / max(run.total, 1), 3),
        "device": str(run.device),
        "patients_list": [
            {"patient_id": r.patient_id, "body_part": r.body_part, "lesions": r.lesions, "acquisition": asdict(a)}
            for r, a in zip(records, acquisitions, strict=True)
        ],
    }
    if run.span is not None:  # only span archives carry these keys: older manifests stay as they were
        manifest["span"] = run.span
        manifest["uid_namespace"] = run.uid_seed
        manifest["anatomy_seed_salt"] = OOD_SALT if run.span == "ood" else None
    return manifest


def _write_truth(
    path: Path,
    header: Dataset,
    anatomy: PatientAnatomy,
    spacing: float,
    run: _Run,
    uids: dict[str, object],
    slices: list[dict[str, object]],
) -> None:
    """truth.json: anatomy summary, every lesion in 3D and where it cuts each slice (for lesion scoring)."""
    truth = {
        "patient_id": header.PatientID,
        "body_part": anatomy.body_part,
        "study_instance_uid": uids["study"],
        "frame_of_reference_uid": uids["frame"],
        "series_instance_uids": uids["series"],
        "sop_instance_uids": uids["sop"],
        "size": run.size,
        "pixel_spacing_mm": spacing,
        "slice_thickness_mm": run.thickness_mm,
        "pixel_coordinates": "center_px = (column, row), 0-based, of the image as stored",
        "anatomy": anatomy.summary(),
        "lesions": [_lesion_json(les) for les in anatomy.lesions],
        "slices": slices,
    }
    path.write_text(json.dumps(truth, indent=2))


def read_pixels_hu(path: Path) -> np.ndarray:
    """HU image of one written slice (the node's HU reader, denoise/decode.py)."""
    return file_hu(path)
