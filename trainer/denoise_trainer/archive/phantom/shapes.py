"""The phantom's shapes and their rendering: structures with elliptic axial sections, lesions as spheres, the
label map, and a slice rendered in HU at any z. Coordinates are patient millimetres in DICOM LPS orientation:
x towards the patient's left, y posterior, z superior; the image centre is x = y = 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from denoise_trainer.archive.phantom.local_contrast import background_offset
from denoise_trainer.archive.phantom.organ_texture import OrganTexture, add_organ_textures

log = logging.getLogger(__name__)


BODY_PARTS: tuple[str, ...] = ("chest", "abdomen")
AIR_HU = -1000.0
LABELS: tuple[str, ...] = (
    "air",
    "table",
    "fat",
    "muscle",
    "cavity",
    "lung",
    "vessel",
    "heart",
    "aorta",
    "ivc",
    "liver",
    "spleen",
    "kidney",
    "bowel",
    "bowel_gas",
    "bone",
    "marrow",
    "disc",
    "canal",
    "lesion",
    "metal",  # rich detail only (clips, wires, screws); appended so that the plain labels keep their ids
)
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
PLACEMENT_SPACING_MM = 1.0
PLACEMENT_SIZE = 400
TWO_PI = 2.0 * math.pi

Ellipse = tuple[float, float, float, float, float]


@dataclass(frozen=True)
class Structure:
    """One 3D shape with elliptic axial sections; cheap to render, smooth along z, exact as truth."""

    name: str
    label: str
    hu: float
    center: tuple[float, float]
    axes: tuple[float, float]
    theta: float = 0.0
    z_center: float = 0.0
    z_half: float | None = None  # None: a tube along z; otherwise an ellipsoid profile of this half length
    drift: tuple[float, float] = (0.0, 0.0)  # centre shift per mm of z, for oblique tubes such as vessels
    taper: float = 0.0  # relative change of the axes per mm of z
    wobble: float = 0.0  # relative amplitude of a slow periodic modulation of the axes along z
    wobble_period: float = 200.0
    wobble_phase: float = 0.0
    texture: float = 0.0  # HU amplitude of the patient's smooth texture field inside this structure
    inside: str | None = None  # paint only over pixels that already carry this label
    bands: tuple[float, float, float] | None = None  # (pitch, start, length): periodic in z (vertebrae, ribs)

    def section(self, z: float) -> Ellipse | None:
        """Ellipse (cx, cy, a, b, theta) of the section at z in mm, or None where the shape is absent."""
        if self.bands is not None:
            pitch, start, length = self.bands
            if (z - start) % pitch >= length:
                return None
        dz = z - self.z_center
        scale = 1.0 + self.taper * dz
        if self.z_half is not None:
            u = dz / self.z_half
            if abs(u) >= 1.0:
                return None
            scale *= math.sqrt(1.0 - u * u)
        if self.wobble:
            scale *= 1.0 + self.wobble * math.sin(TWO_PI * z / self.wobble_period + self.wobble_phase)
        if scale <= 0.0:
            return None
        cx = self.center[0] + self.drift[0] * dz
        cy = self.center[1] + self.drift[1] * dz
        return cx, cy, self.axes[0] * scale, self.axes[1] * scale, self.theta


@dataclass(frozen=True)
class Lesion:
    """A spherical lesion with known truth, so denoisers can be scored on whether they keep it."""

    index: int
    organ: str
    kind: str
    center_mm: tuple[float, float, float]  # x, y, z
    radius_mm: float
    contrast_hu: float  # relative to the nominal HU of its organ
    hu: float  # nominal HU of the lesion


@dataclass(frozen=True)
class LesionOnSlice:
    """Where a lesion cuts one slice, in mm and in pixels (column, row)."""

    lesion_index: int
    organ: str
    kind: str
    z_mm: float
    center_mm: tuple[float, float]
    center_px: tuple[float, float]
    radius_mm: float  # radius of this cross-section
    radius_px: float
    sphere_radius_mm: float
    contrast_hu: float


@dataclass(frozen=True, eq=False)
class Texture:
    """Smooth deterministic 3D field (low-frequency cosines, std ~1): organ heterogeneity, not noise."""

    wavevectors: np.ndarray  # (K, 3) rad/mm
    phases: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (K,)

    def evaluate(self, xs: np.ndarray, ys: np.ndarray, z: float) -> np.ndarray:
        """Field on the grid ys × xs (1D coordinate arrays in mm) at height z."""
        out = np.zeros((ys.size, xs.size), dtype=np.float64)
        for (kx, ky, kz), phase, amp in zip(self.wavevectors, self.phases, self.amplitudes, strict=True):
            row = np.exp(1j * kx * xs)[None, :]
            col = np.exp(1j * (ky * ys + kz * z + phase))[:, None]
            out += amp * (row * col).real
        return out


@dataclass(frozen=True, eq=False)
class PatientAnatomy:
    """One synthetic patient: ordered structures (painter's order), lesions and a texture field."""

    body_part: str
    structures: tuple[Structure, ...]
    lesions: tuple[Lesion, ...]
    texture: Texture
    z_extent_mm: tuple[float, float]
    body_axes_mm: tuple[float, float]
    organ_textures: tuple[OrganTexture, ...] = ()  # rich detail: correlated fine texture per organ
    local_contrast: bool = False  # rich detail: lesions painted relative to their local background

    def summary(self) -> dict[str, object]:
        """JSON-ready description (why: truth files must say what was simulated)."""
        return {
            "body_part": self.body_part,
            "z_extent_mm": list(self.z_extent_mm),
            "body_semi_axes_mm": [round(a, 2) for a in self.body_axes_mm],
            "structures": [
                {
                    "name": s.name,
                    "label": s.label,
                    "hu": round(s.hu, 1),
                    "center_mm": [round(c, 2) for c in s.center],
                    "semi_axes_mm": [round(a, 2) for a in s.axes],
                    "z_center_mm": round(s.z_center, 2),
                    "z_half_mm": None if s.z_half is None else round(s.z_half, 2),
                }
                for s in self.structures
                if s.label != "vessel"
            ],
            "vessel_count": sum(s.label == "vessel" for s in self.structures),
        }


@dataclass(frozen=True, eq=False)
class SliceRender:
    """A rendered slice: HU image, label map (indices into LABELS) and the lesions it cuts."""

    hu: np.ndarray
    labels: np.ndarray
    lesions: list[LesionOnSlice]


# -------------------------------------------------------------------------------------------------- rendering


def grid_mm(size: int, pixel_spacing: float) -> np.ndarray:
    """Pixel-centre coordinates in mm along one axis, centred on the image centre."""
    return (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * pixel_spacing


def _paint(
    hu: np.ndarray | None,
    labels: np.ndarray,
    coords: np.ndarray,
    pixel_spacing: float,
    ellipse: Ellipse,
    value: float,
    label_id: int,
    inside_id: int | None,
    tex: np.ndarray | None,
    tex_amp: float,
) -> None:
    """Paint one ellipse with anti-aliased (partial-volume) edges, only inside its bounding box."""
    cx, cy, a, b, theta = ellipse
    if min(a, b) < 0.05:
        return
    c, s = math.cos(theta), math.sin(theta)
    margin = 2.0 * pixel_spacing
    hx = math.hypot(a * c, b * s) + margin
    hy = math.hypot(a * s, b * c) + margin
    n = coords.size
    origin = coords[0]
    c0 = max(0, int(math.floor((cx - hx - origin) / pixel_spacing)))
    c1 = min(n, int(math.ceil((cx + hx - origin) / pixel_spacing)) + 1)
    r0 = max(0, int(math.floor((cy - hy - origin) / pixel_spacing)))
    r1 = min(n, int(math.ceil((cy + hy - origin) / pixel_spacing)) + 1)
    if c0 >= c1 or r0 >= r1:
        return
    dx = coords[c0:c1][None, :] - cx
    dy = coords[r0:r1][:, None] - cy
    u = dx * c + dy * s
    v = -dx * s + dy * c
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2) / np.maximum(rho, 1e-9)
    dist = (rho - 1.0) / np.maximum(grad, 1e-9)  # approximate signed distance to the outline, mm
    alpha = np.clip(0.5 - dist / pixel_spacing, 0.0, 1.0)
    lab = labels[r0:r1, c0:c1]
    if inside_id is not None:
        alpha = alpha * (lab == inside_id)
    if hu is not None:
        box = hu[r0:r1, c0:c1]
        target = value + tex_amp * tex[r0:r1, c0:c1] if (tex is not None and tex_amp) else value
        box += alpha * (target - box)
    lab[alpha >= 0.5] = label_id


def render_slice_with_labels(
    anatomy: PatientAnatomy,
    z_mm: float,
    size: int = 512,
    pixel_spacing: float = 0.7,
    *,
    with_hu: bool = True,
    with_lesions: bool = True,
) -> SliceRender:
    """Render one axial plane at z_mm: HU (float32), label map (uint8) and the lesions cut by the plane."""
    coords = grid_mm(size, pixel_spacing)
    labels = np.zeros((size, size), dtype=np.uint8)
    hu = np.full((size, size), AIR_HU, dtype=np.float64) if with_hu else None
    tex = anatomy.texture.evaluate(coords, coords, z_mm) if with_hu else None
    organ_texture: dict[str, float] = {}
    for st in anatomy.structures:
        organ_texture.setdefault(st.label, st.texture)
        section = st.section(z_mm)
        if section is None:
            continue
        inside = None if st.inside is None else LABEL_IDS[st.inside]
        _paint(hu, labels, coords, pixel_spacing, section, st.hu, LABEL_IDS[st.label], inside, tex, st.texture)
    if hu is not None and anatomy.organ_textures:
        add_organ_textures(hu, labels, coords, z_mm, anatomy.organ_textures, LABEL_IDS)
    on_slice = _lesions_on_slice(anatomy, z_mm, size, pixel_spacing) if with_lesions else []
    offsets = [0.0] * len(on_slice)
    if hu is not None and anatomy.local_contrast:
        offsets = _local_offsets(anatomy, on_slice, hu, tex, organ_texture)
    for cut, offset in zip(on_slice, offsets, strict=True):
        les = anatomy.lesions[cut.lesion_index]
        tex_amp = 0.0 if les.organ == "lung" else organ_texture.get(les.organ, 0.0)
        _paint(
            hu,
            labels,
            coords,
            pixel_spacing,
            (*cut.center_mm, cut.radius_mm, cut.radius_mm, 0.0),
            les.hu + offset if offset else les.hu,
            LABEL_IDS["lesion"],
            LABEL_IDS[les.organ],
            tex,
            tex_amp,
        )
    out = hu.astype(np.float32) if hu is not None else np.zeros((0, 0), dtype=np.float32)
    return SliceRender(hu=out, labels=labels, lesions=on_slice)


def _lesions_on_slice(anatomy: PatientAnatomy, z_mm: float, size: int, pixel_spacing: float) -> list[LesionOnSlice]:
    """Where each lesion cuts the plane z_mm."""
    half = (size - 1) / 2.0
    out = []
    for les in anatomy.lesions:
        dz = z_mm - les.center_mm[2]
        if abs(dz) >= les.radius_mm:
            continue
        r = math.sqrt(les.radius_mm**2 - dz**2)
        x, y = les.center_mm[0], les.center_mm[1]
        out.append(
            LesionOnSlice(
                lesion_index=les.index,
                organ=les.organ,
                kind=les.kind,
                z_mm=float(z_mm),
                center_mm=(x, y),
                center_px=(x / pixel_spacing + half, y / pixel_spacing + half),
                radius_mm=r,
                radius_px=r / pixel_spacing,
                sphere_radius_mm=les.radius_mm,
                contrast_hu=les.contrast_hu,
            )
        )
    return out


def _local_offsets(
    anatomy: PatientAnatomy,
    cuts: list[LesionOnSlice],
    hu: np.ndarray,
    tex: np.ndarray | None,
    organ_texture: dict[str, float],
) -> list[float]:
    """Each cut lesion's local background − its organ's nominal HU, on the image before any lesion is painted."""
    nominal = {s.label: s.hu for s in reversed(anatomy.structures)}
    circles = [(c.center_px[0], c.center_px[1], c.radius_px) for c in cuts]
    out = []
    for k, cut in enumerate(cuts):
        amp = 0.0 if cut.organ == "lung" else organ_texture.get(cut.organ, 0.0)
        term = amp * tex if (amp and tex is not None) else None
        others = circles[:k] + circles[k + 1 :]
        out.append(background_offset(hu, term, circles[k], others, nominal[cut.organ]))
    return out


def render_slice(
    anatomy: PatientAnatomy, z_mm: float, size: int = 512, pixel_spacing: float = 0.7
) -> tuple[np.ndarray, list[LesionOnSlice]]:
    """HU image (float32, size × size) of the axial plane at z_mm and the lesions visible on it."""
    rendered = render_slice_with_labels(anatomy, z_mm, size, pixel_spacing)
    return rendered.hu, rendered.lesions
