"""Synthetic CT archive: per patient one study with HD, LD (quarter dose) and REF (noise-free) series.

Why: tests, demos and training need paired LD/HD CT with known truth and no patient data. Anatomy comes
from trainer/phantom, dose from trainer/ct_physics.py (Poisson counts on projections, then FBP: never image-domain
noise). Everything (pixels, UIDs, dates, names) is a deterministic function of the seed, except
the timing in the manifest.

Layout: OUT/<PatientID>/<HD|LD|REF>/0001.dcm …, OUT/<PatientID>/truth.json, OUT/archive.json.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from denoise_trainer.archive import physics as ct_physics
from denoise_trainer.archive.phantom import PatientAnatomy, make_patient, render_slice
from dicom_denoise_node.denoise.decode import file_hu

log = logging.getLogger(__name__)

MANUFACTURER = "dicom-denoise-node synthetic"
HU_OFFSET = 1024  # stored = HU + 1024, RescaleIntercept −1024
BITS_STORED = 12
HD_MAS = 200.0
EXPOSURE_TIME_MS = 500  # one 0.5 s rotation per slice
CTDI_PER_MAS = 0.065  # mGy per mAs at 120 kVp, 32 cm body phantom (typical order of magnitude)
FOV_MM = 0.7 * 512  # default reconstruction field of view
_UID_ROOT = "dicom-denoise-node-synth"


@dataclass(frozen=True)
class SeriesSpec:
    """What distinguishes one of the three series of a study."""

    kind: str
    number: int
    description: str
    mas: float | None  # None: REF is not a physical acquisition


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


def series_specs(ld_fraction: float = 0.25, hd_mas: float = HD_MAS) -> dict[str, SeriesSpec]:
    """HD, LD and REF series descriptions; LD mAs follows the dose fraction."""
    ld_mas = round(hd_mas * ld_fraction, 1)
    hd_mas = round(hd_mas, 1)
    return {
        "HD": SeriesSpec("HD", 2, f"Regular dose (HD) {hd_mas:g} mAs", hd_mas),
        "LD": SeriesSpec(
            "LD",
            3,
            f"Quarter dose (LD) {ld_mas:g} mAs" if ld_fraction == 0.25 else f"Low dose (LD) {ld_mas:g} mAs",
            ld_mas,
        ),
        "REF": SeriesSpec("REF", 4, "Noise-free reference (REF) for evaluation only", None),
    }


def _uid(*parts: object) -> str:
    """Deterministic UID from the seed and what the UID names (reproducible archives)."""
    return generate_uid(entropy_srcs=[_UID_ROOT, *(str(p) for p in parts)])


def _patient_header(rng: np.random.Generator, index: int, body_part: str) -> Dataset:
    """Patient and study level attributes, shared by the three series."""
    ds = Dataset()
    number = index + 1
    study_date = dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    age = int(rng.integers(35, 85))
    birth = study_date - dt.timedelta(days=age * 365 + int(rng.integers(0, 365)))
    seconds = int(rng.integers(7 * 3600, 18 * 3600))
    ds.PatientName = f"SYNTH^P{number:04d}"
    ds.PatientID = f"SYNTH{number:04d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
    ds.AccessionNumber = f"SYN{number:06d}"
    ds.StudyID = f"{number}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"CT {body_part.upper()} synthetic LD/HD"
    ds.BodyPartExamined = body_part.upper()
    return ds


def _slice_dataset(
    header: Dataset,
    spec: SeriesSpec,
    pixels_hu: np.ndarray,
    *,
    seed: int,
    instance: int,
    z_mm: float,
    pixel_spacing: float,
    thickness: float,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    body_part: str,
    window: str,
) -> Dataset:
    """One CT Image Storage instance (Explicit VR Little Endian) with consistent dose and geometry tags."""
    sop_uid = _uid(seed, header.PatientID, spec.kind, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.update(header)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.StudyDate
    series_time = dt.datetime.strptime(header.StudyTime, "%H%M%S") + dt.timedelta(minutes=spec.number)
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_time.strftime("%H%M%S")
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Synthetic"
    ds.ManufacturerModelName = "parallel-beam FBP simulator"
    ds.SoftwareVersions = "trainer.synth 1"
    ds.SeriesDescription = spec.description
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = spec.number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    # acquisition and reconstruction
    n = pixels_hu.shape[0]
    ds.ScanOptions = "AXIAL"
    ds.KVP = 120
    ds.SliceThickness = f"{thickness:g}"
    ds.SpacingBetweenSlices = f"{thickness:g}"
    ds.DataCollectionDiameter = 500
    ds.ReconstructionDiameter = f"{n * pixel_spacing:.2f}"
    ds.GantryDetectorTilt = 0
    ds.RotationDirection = "CW"
    ds.ConvolutionKernel = window.upper()
    if spec.mas is not None:
        ds.ExposureTime = EXPOSURE_TIME_MS
        ds.XRayTubeCurrent = int(round(spec.mas / (EXPOSURE_TIME_MS / 1000.0)))
        ds.Exposure = int(round(spec.mas))
        ds.CTDIvol = round(spec.mas * CTDI_PER_MAS, 3)
        phantom = Dataset()
        phantom.CodeValue, phantom.CodingSchemeDesignator = "113691", "DCM"
        phantom.CodeMeaning = "IEC Body Dosimetry Phantom"
        ds.CTDIPhantomTypeCodeSequence = [phantom]
    # image plane
    first = -(n - 1) / 2.0 * pixel_spacing
    ds.ImagePositionPatient = [f"{first:.4f}", f"{first:.4f}", f"{z_mm:.4f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{z_mm:.4f}"
    ds.PixelSpacing = [f"{pixel_spacing:.6g}", f"{pixel_spacing:.6g}"]
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = n
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -HU_OFFSET
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    if body_part == "chest":
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    else:
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.WindowCenterWidthExplanation = "ABDOMEN"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    stored = np.clip(np.rint(pixels_hu + HU_OFFSET), 0, (1 << BITS_STORED) - 1).astype("<u2")
    ds.PixelData = stored.tobytes()
    return ds


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


def _patient_seeds(seed: int, index: int) -> list[np.random.SeedSequence]:
    """Independent streams for anatomy, noise, header and acquisition of one patient (changing one leaves the
    others; the fourth is used only by ``vary``, so archives made without it are unchanged)."""
    return np.random.SeedSequence([seed, index]).spawn(4)


@dataclass(frozen=True)
class Acquisition:
    """How one patient was scanned: dose, LD fraction, reconstruction kernel and field of view."""

    i0_hd: float
    ld_fraction: float
    window: str
    pixel_spacing_mm: float
    electronic_noise: float

    @property
    def hd_mas(self) -> float:
        return HD_MAS * self.i0_hd / ct_physics.DEFAULT_I0_HD


# Ranges of ``vary``: what differs between scanners, protocols and patients on a real archive. Why: a model trained
# on one dose, one kernel and one field of view learns that simulator, not low-dose CT (docs/training.md).
# The ranges are kept narrow enough that a patch's noise level still tells LD from HD (the LD/HD noise ratio is
# about 2): with a 2× dose range, the Ram-Lak kernel and 300–420 mm, HD patches of noisy protocols were as noisy as
# LD patches of quiet ones, and unpaired discriminators could not learn the domains (docs/model-card.md, run 3).
VARY_I0_FACTOR = (0.75, 1.33)  # HD dose relative to the default, log-uniform (patient size and protocol)
VARY_LD_FRACTION = (0.2, 0.33)  # LD dose as a fraction of HD
VARY_WINDOWS = ("shepp-logan", "hann")  # standard and smooth kernels
VARY_FOV_MM = (320.0, 400.0)  # reconstruction field of view
VARY_ELECTRONIC_NOISE = (5.0, 12.0)  # detector noise, counts


def draw_acquisition(seq: np.random.SeedSequence, size: int) -> Acquisition:
    """A random, plausible acquisition for one patient (``synthesize_archive(vary=True)``)."""
    rng = np.random.default_rng(seq)
    lo, hi = np.log(VARY_I0_FACTOR)
    return Acquisition(
        i0_hd=float(ct_physics.DEFAULT_I0_HD * np.exp(rng.uniform(lo, hi))),
        ld_fraction=float(rng.uniform(*VARY_LD_FRACTION)),
        window=str(rng.choice(VARY_WINDOWS)),
        pixel_spacing_mm=float(rng.uniform(*VARY_FOV_MM) / size),
        electronic_noise=float(rng.uniform(*VARY_ELECTRONIC_NOISE)),
    )


def patient_anatomy(seed: int, index: int, body_part: str, z_positions_mm: Sequence[float]) -> PatientAnatomy:
    """The anatomy synthesize_archive used for patient `index` (0-based), e.g. for organ masks in scoring."""
    anatomy_seq = _patient_seeds(seed, index)[0]
    return make_patient(np.random.default_rng(anatomy_seq), body_part, (min(z_positions_mm), max(z_positions_mm)))


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
    i0_hd: float = ct_physics.DEFAULT_I0_HD,
    ld_fraction: float = 0.25,
    electronic_noise: float = ct_physics.DEFAULT_ELECTRONIC_NOISE,
    window: str = "shepp-logan",
    device: ct_physics.Device = "cpu",
    vary: bool = False,
) -> list[PatientRecord]:
    """Write a reproducible archive of `patients` studies × `slices` axial slices (HD, LD, REF series each).

    pixel_spacing_mm defaults to a ~358 mm field of view at any size (0.7 mm at 512). progress(done, total)
    is called after each slice position. ``vary`` draws each patient's dose, LD fraction, kernel, field of view
    and detector noise (``draw_acquisition``) instead of using the arguments.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    default = Acquisition(i0_hd, ld_fraction, window, pixel_spacing_mm or FOV_MM / size, electronic_noise)
    root = np.random.SeedSequence([seed])
    parts = _body_parts(np.random.default_rng(root.spawn(1)[0]), patients, list(body_parts))
    total, done, sim_seconds = patients * slices, 0, 0.0
    records: list[PatientRecord] = []
    half = (slices - 1) / 2.0
    z_positions = [round((half - i) * slice_thickness_mm, 4) for i in range(slices)]  # superior first
    acquisitions: list[Acquisition] = []
    for index, body_part in enumerate(parts):
        _, noise_seq, header_seq, acq_seq = _patient_seeds(seed, index)
        acq = draw_acquisition(acq_seq, size) if vary else default
        acquisitions.append(acq)
        spacing, window = acq.pixel_spacing_mm, acq.window
        specs = series_specs(acq.ld_fraction, acq.hd_mas)
        doses = {"HD": acq.i0_hd, "LD": acq.i0_hd * acq.ld_fraction}
        anatomy = patient_anatomy(seed, index, body_part, z_positions)
        noise_rng = np.random.default_rng(noise_seq)
        header = _patient_header(np.random.default_rng(header_seq), index, body_part)
        pid = header.PatientID
        study_uid, frame_uid = _uid(seed, pid, "study"), _uid(seed, pid, "frame")
        series_uids = {kind: _uid(seed, pid, "series", kind) for kind in specs}
        patient_dir = out_dir / pid
        for kind in specs:
            (patient_dir / kind).mkdir(parents=True, exist_ok=True)
        slice_truth: list[dict[str, object]] = []
        sop_uids: dict[str, list[str]] = {kind: [] for kind in specs}
        for i, z in enumerate(z_positions):
            hu, lesions = render_slice(anatomy, z, size, spacing)
            t0 = time.perf_counter()
            images = ct_physics.simulate_doses(
                hu,
                doses,
                noise_rng,
                pixel_spacing=spacing,
                views=views,
                electronic_noise=acq.electronic_noise,
                window=window,
                device=device,
            )
            sim_seconds += time.perf_counter() - t0
            for kind, spec in specs.items():
                ds = _slice_dataset(
                    header,
                    spec,
                    images[kind],
                    seed=seed,
                    instance=i + 1,
                    z_mm=z,
                    pixel_spacing=spacing,
                    thickness=slice_thickness_mm,
                    study_uid=study_uid,
                    series_uid=series_uids[kind],
                    frame_uid=frame_uid,
                    body_part=body_part,
                    window=window,
                )
                ds.save_as(patient_dir / kind / f"{i + 1:04d}.dcm", enforce_file_format=True)
                sop_uids[kind].append(ds.SOPInstanceUID)
            slice_truth.append({"slice_index": i + 1, "z_mm": z, "lesions": [_lesion_json(les) for les in lesions]})
            done += 1
            if progress is not None:
                progress(done, total)
        truth_path = patient_dir / "truth.json"
        _write_truth(
            truth_path,
            header,
            anatomy,
            spacing,
            size,
            slice_thickness_mm,
            study_uid,
            frame_uid,
            series_uids,
            sop_uids,
            slice_truth,
        )
        records.append(
            PatientRecord(
                patient_id=pid,
                body_part=body_part,
                directory=patient_dir,
                study_instance_uid=study_uid,
                frame_of_reference_uid=frame_uid,
                series_instance_uids=series_uids,
                slices=slices,
                lesions=len(anatomy.lesions),
                truth_path=truth_path,
                slice_positions_mm=list(z_positions),
            )
        )
        log.info("synthetic patient %s (%s): %d slices, %d lesions", pid, body_part, slices, len(anatomy.lesions))
    manifest = {
        "generator": "trainer.synth",
        "seed": seed,
        "patients": patients,
        "slices": slices,
        "size": size,
        "varied": vary,
        "pixel_spacing_mm": default.pixel_spacing_mm,
        "slice_thickness_mm": slice_thickness_mm,
        "views": views or ct_physics.default_views(size),
        "detector_bins": ct_physics.detector_bins(size),
        "i0": {"HD": default.i0_hd, "LD": default.i0_hd * default.ld_fraction},
        "mas": {k: s.mas for k, s in series_specs(default.ld_fraction, default.hd_mas).items()},
        "electronic_noise_counts": default.electronic_noise,
        "fbp_window": default.window,
        "mu_water_per_mm": ct_physics.MU_WATER_PER_MM,
        "seconds_per_slice": round(sim_seconds / max(total, 1), 3),
        "device": str(device),
        "patients_list": [
            {"patient_id": r.patient_id, "body_part": r.body_part, "lesions": r.lesions, "acquisition": asdict(a)}
            for r, a in zip(records, acquisitions, strict=True)
        ],
    }
    (out_dir / "archive.json").write_text(json.dumps(manifest, indent=2))
    log.info(
        "synthetic archive in %s: %d patients × %d slices, %.2f s per slice (3 reconstructions)",
        out_dir,
        patients,
        slices,
        manifest["seconds_per_slice"],
    )
    return records


def _write_truth(
    path: Path,
    header: Dataset,
    anatomy: PatientAnatomy,
    spacing: float,
    size: int,
    thickness: float,
    study_uid: str,
    frame_uid: str,
    series_uids: dict[str, str],
    sop_uids: dict[str, list[str]],
    slices: list[dict[str, object]],
) -> None:
    """truth.json: anatomy summary, every lesion in 3D and where it cuts each slice (for lesion scoring)."""
    truth = {
        "patient_id": header.PatientID,
        "body_part": anatomy.body_part,
        "study_instance_uid": study_uid,
        "frame_of_reference_uid": frame_uid,
        "series_instance_uids": series_uids,
        "sop_instance_uids": sop_uids,
        "size": size,
        "pixel_spacing_mm": spacing,
        "slice_thickness_mm": thickness,
        "pixel_coordinates": "center_px = (column, row), 0-based, of the image as stored",
        "anatomy": anatomy.summary(),
        "lesions": [_lesion_json(les) for les in anatomy.lesions],
        "slices": slices,
    }
    path.write_text(json.dumps(truth, indent=2))


def read_pixels_hu(path: Path) -> np.ndarray:
    """HU image of one written slice (the node's HU reader, denoise/decode.py)."""
    return file_hu(path)
