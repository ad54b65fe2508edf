"""Analytic axial CT phantoms in HU, with known lesions, for the synthetic LD/HD archive.

Why analytic: every structure is a smooth 3D shape whose axial cross-section is an ellipse, so slices vary
smoothly along z, a patient is reproducible from a seeded generator, and lesion positions, sizes and contrasts
are known exactly for scoring. Coordinates are patient millimetres in DICOM LPS orientation: x towards the
patient's left, y posterior, z superior; the image centre is x = y = 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

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
)
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
_PLACEMENT_SPACING_MM = 1.0
_PLACEMENT_SIZE = 400
_TWO_PI = 2.0 * math.pi

Ellipse = tuple[float, float, float, float, float]
_LesionSpec = tuple[str, str, float, float]  # organ, kind, radius mm, contrast HU


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
            scale *= 1.0 + self.wobble * math.sin(_TWO_PI * z / self.wobble_period + self.wobble_phase)
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


def _grid(size: int, pixel_spacing: float) -> np.ndarray:
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
    coords = _grid(size, pixel_spacing)
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
    on_slice: list[LesionOnSlice] = []
    if with_lesions:
        for les in anatomy.lesions:
            dz = z_mm - les.center_mm[2]
            if abs(dz) >= les.radius_mm:
                continue
            r = math.sqrt(les.radius_mm**2 - dz**2)
            x, y = les.center_mm[0], les.center_mm[1]
            tex_amp = 0.0 if les.organ == "lung" else organ_texture.get(les.organ, 0.0)
            _paint(
                hu,
                labels,
                coords,
                pixel_spacing,
                (x, y, r, r, 0.0),
                les.hu,
                LABEL_IDS["lesion"],
                LABEL_IDS[les.organ],
                tex,
                tex_amp,
            )
            half = (size - 1) / 2.0
            on_slice.append(
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
    out = hu.astype(np.float32) if hu is not None else np.zeros((0, 0), dtype=np.float32)
    return SliceRender(hu=out, labels=labels, lesions=on_slice)


def render_slice(
    anatomy: PatientAnatomy, z_mm: float, size: int = 512, pixel_spacing: float = 0.7
) -> tuple[np.ndarray, list[LesionOnSlice]]:
    """HU image (float32, size × size) of the axial plane at z_mm and the lesions visible on it."""
    rendered = render_slice_with_labels(anatomy, z_mm, size, pixel_spacing)
    return rendered.hu, rendered.lesions


# ---------------------------------------------------------------------------------------------------- anatomy


def _texture(rng: np.random.Generator, components: int = 24) -> Texture:
    """Random smooth field with wavelengths 12–80 mm (organ-scale heterogeneity)."""
    wavelengths = rng.uniform(12.0, 80.0, components)
    directions = rng.normal(size=(components, 3))
    directions[:, 2] *= 0.7
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavevectors = directions * (_TWO_PI / wavelengths)[:, None]
    amplitudes = wavelengths / np.sqrt(np.sum(wavelengths**2) / 2.0)
    return Texture(wavevectors=wavevectors, phases=rng.uniform(0, _TWO_PI, components), amplitudes=amplitudes)


@dataclass(frozen=True)
class _Trunk:
    cx: float
    cy: float
    a: float
    b: float
    fat: float
    muscle: float
    spine_y: float
    vertebra_r: float


def _trunk(
    rng: np.random.Generator,
    a_range: tuple[float, float],
    ratio: tuple[float, float],
    fat: tuple[float, float],
    muscle: tuple[float, float],
) -> tuple[_Trunk, list[Structure], dict[str, float]]:
    """Body outline, subcutaneous fat, muscle wall and the body cavity (shared wobble keeps them nested)."""
    a = rng.uniform(*a_range)
    b = a * rng.uniform(*ratio)
    cx, cy = rng.normal(0.0, 4.0), rng.uniform(-12.0, 2.0)
    f, m = rng.uniform(*fat), rng.uniform(*muscle)
    wob = {
        "wobble": rng.uniform(0.01, 0.025),
        "wobble_period": rng.uniform(180, 320),
        "wobble_phase": rng.uniform(0, _TWO_PI),
    }
    vr = rng.uniform(14.0, 18.0)
    spine_y = cy + b - f - rng.uniform(40.0, 50.0) - vr
    t = _Trunk(cx, cy, a, b, f, m, spine_y, vr)
    layers = [
        Structure("body", "fat", rng.uniform(-110, -90), (cx, cy), (a, b), texture=4.0, **wob),
        Structure("muscle wall", "muscle", rng.uniform(45, 58), (cx, cy), (a - f, b - f), texture=3.0, **wob),
    ]
    return t, layers, wob


def _spine(rng: np.random.Generator, t: _Trunk, z0: float) -> list[Structure]:
    """Paraspinal muscles, vertebra (cortical rim, cancellous core) alternating with discs along z."""
    pitch = rng.uniform(24.0, 30.0)
    disc = rng.uniform(4.0, 6.0)
    start = z0 + rng.uniform(0, pitch)
    bone = (pitch, start + disc, pitch - disc)
    gap = (pitch, start, disc)
    vr, cx, sy = t.vertebra_r, t.cx, t.spine_y
    canal_y = sy + vr + 9.0
    pm = rng.uniform(45, 58)
    return [
        Structure(
            "paraspinal R",
            "muscle",
            pm,
            (cx - 30.0, canal_y + 12.0),
            (rng.uniform(22, 26), 17.0),
            0.25,
            texture=3.0,
        ),
        Structure(
            "paraspinal L",
            "muscle",
            pm,
            (cx + 30.0, canal_y + 12.0),
            (rng.uniform(22, 26), 17.0),
            -0.25,
            texture=3.0,
        ),
        Structure("neural arch", "bone", rng.uniform(600, 800), (cx, canal_y + 1.0), (13.0, 12.0)),
        Structure("spinous process", "bone", rng.uniform(600, 800), (cx, canal_y + 20.0), (4.5, 12.0), bands=bone),
        Structure("spinal canal", "canal", rng.uniform(5, 20), (cx, canal_y), (8.0, 7.0)),
        Structure("vertebral body", "bone", rng.uniform(950, 1100), (cx, sy), (vr * 1.12, vr), bands=bone),
        Structure(
            "cancellous bone",
            "marrow",
            rng.uniform(200, 300),
            (cx, sy),
            (vr * 1.12 - 2.2, vr - 2.2),
            texture=6.0,
            bands=bone,
        ),
        Structure("intervertebral disc", "disc", rng.uniform(70, 100), (cx, sy), (vr * 1.12, vr), bands=gap),
    ]


def _table(t: _Trunk) -> list[Structure]:
    """Patient table under the body (a flat carbon-fibre shell with a foam core)."""
    y = t.cy + t.b + 4.0
    return [
        Structure("table shell", "table", 150.0, (0.0, y + 12.0), (230.0, 9.0)),
        Structure("table core", "table", -850.0, (0.0, y + 12.0), (226.0, 6.5)),
    ]


def _in_ellipse(rng: np.random.Generator, n: int, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Uniform random points inside an axis-aligned ellipse, shape (n, 2)."""
    r = np.sqrt(rng.uniform(0, 1, n))
    phi = rng.uniform(0, _TWO_PI, n)
    return np.stack([cx + a * r * np.cos(phi), cy + b * r * np.sin(phi)], axis=1)


def _chest(rng: np.random.Generator, z0: float) -> tuple[list[Structure], _Trunk]:
    t, layers, wob = _trunk(rng, (140.0, 170.0), (0.62, 0.76), (6.0, 22.0), (10.0, 18.0))
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out = [
        *layers,
        Structure("thoracic cavity", "cavity", rng.uniform(-90, -60), (cx, cy), (ia, ib), texture=4.0, **wob),
    ]
    lung_hu = rng.uniform(-870, -820)
    lungs = []
    for side, width in ((-1.0, rng.uniform(0.42, 0.46)), (1.0, rng.uniform(0.39, 0.43))):
        lcx, lcy = cx + side * 0.53 * ia, cy - 0.02 * ib
        la, lb = width * ia, rng.uniform(0.82, 0.9) * ib
        lungs.append((lcx, lcy, la, lb))
        out.append(
            Structure(
                f"lung {'R' if side < 0 else 'L'}",
                "lung",
                lung_hu,
                (lcx, lcy),
                (la, lb),
                side * rng.uniform(0.0, 0.12),
                z_center=z0,
                taper=-rng.uniform(0.0008, 0.0018),
                texture=18.0,
            )
        )
    heart_hu = rng.uniform(35, 45)
    out.append(
        Structure(
            "heart",
            "heart",
            heart_hu,
            (cx + 0.12 * ia, cy - 0.33 * ib),
            (rng.uniform(0.32, 0.38) * ia, rng.uniform(0.36, 0.42) * ib),
            -rng.uniform(0.3, 0.7),
            z_center=z0 - rng.uniform(20, 45),
            z_half=rng.uniform(90, 120),
            texture=3.0,
        )
    )
    # pulmonary vessels: oblique tubes, so their sections move and stretch along z
    for lcx, lcy, la, lb in lungs:
        n = int(rng.integers(30, 50))
        pts = _in_ellipse(rng, n, lcx, lcy, 0.95 * la, 0.95 * lb)
        hilum = np.array([cx + np.sign(lcx - cx) * 0.25 * ia, cy - 0.05 * ib])
        closeness = 1.0 - np.clip(np.linalg.norm((pts - hilum) / [la, lb], axis=1), 0, 1)
        radii = rng.uniform(0.8, 1.5, n) + 3.0 * closeness**2
        slopes = rng.normal(0.0, 0.7, (n, 2))
        for (px, py), r, (sx, sy) in zip(pts, radii, slopes, strict=True):
            stretch = min(math.sqrt(1.0 + sx * sx + sy * sy), 4.0)
            out.append(
                Structure(
                    "pulmonary vessel",
                    "vessel",
                    rng.uniform(30, 50),
                    (px, py),
                    (r * stretch, r),
                    math.atan2(sy, sx),
                    z_center=z0,
                    drift=(sx, sy),
                    inside="lung",
                )
            )
    out += _spine(rng, t, z0)
    out.append(
        Structure(
            "descending aorta",
            "aorta",
            rng.uniform(150, 250),
            (cx + t.vertebra_r + rng.uniform(6, 10), t.spine_y - 0.6 * t.vertebra_r),
            (rng.uniform(10, 14),) * 2,
            z_center=z0,
            drift=(rng.normal(0, 0.03), 0.0),
        )
    )
    out.append(
        Structure(
            "sternum",
            "bone",
            rng.uniform(450, 600),
            (cx, cy - (t.b - t.fat - 0.5 * t.muscle)),
            (rng.uniform(12, 16), 5.5),
        )
    )
    # ribs: sections around the wall, each appearing periodically along z with its own phase
    half = np.linspace(0.45, np.pi - 0.4, 10)  # from beside the spine round to beside the sternum
    angles = np.concatenate([np.pi / 2 - half, np.pi / 2 + half]) + rng.normal(0.0, 0.04, 20)
    ra, rb = t.a - t.fat - 0.45 * t.muscle, t.b - t.fat - 0.45 * t.muscle
    pitch = rng.uniform(30, 36)
    for phi in angles:
        px, py = cx + ra * math.cos(phi), cy + rb * math.sin(phi)
        tangent = math.atan2(rb * math.cos(phi), -ra * math.sin(phi))
        bands = (pitch, z0 + rng.uniform(0, pitch), rng.uniform(0.45, 0.6) * pitch)
        ax, bx = rng.uniform(5.0, 7.0), rng.uniform(3.2, 4.2)
        out.append(Structure("rib", "bone", rng.uniform(700, 900), (px, py), (ax, bx), tangent, bands=bands))
        out.append(
            Structure(
                "rib marrow",
                "marrow",
                rng.uniform(200, 300),
                (px, py),
                (ax - 1.4, bx - 1.4),
                tangent,
                bands=bands,
            )
        )
    out += _table(t)
    return out, t


def _abdomen(rng: np.random.Generator, z0: float) -> tuple[list[Structure], _Trunk]:
    t, layers, wob = _trunk(rng, (135.0, 168.0), (0.68, 0.82), (10.0, 32.0), (8.0, 14.0))
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out = [
        *layers,
        Structure("peritoneal cavity", "cavity", rng.uniform(-95, -70), (cx, cy), (ia, ib), texture=5.0, **wob),
    ]
    # bowel loops (soft tissue) with gas pockets, short along z
    n_loops = int(rng.integers(8, 14))
    loops = _in_ellipse(rng, n_loops, cx + 0.1 * ia, cy - 0.1 * ib, 0.6 * ia, 0.55 * ib)
    for lx, ly in loops:
        r = rng.uniform(10, 20)
        zc, zh = z0 + rng.uniform(-60, 60), rng.uniform(40, 90)
        out.append(
            Structure(
                "bowel loop",
                "bowel",
                rng.uniform(20, 40),
                (lx, ly),
                (r * rng.uniform(1, 1.6), r),
                rng.uniform(0, math.pi),
                z_center=zc,
                z_half=zh,
                drift=tuple(rng.normal(0, 0.3, 2)),
                texture=5.0,
            )
        )
        if rng.uniform() < 0.6:
            g = r * rng.uniform(0.35, 0.7)
            out.append(
                Structure(
                    "bowel gas",
                    "bowel_gas",
                    rng.uniform(-980, -900),
                    (lx, ly - (r - g) * 0.6),
                    (g * rng.uniform(1.0, 1.5), g),
                    0.0,
                    z_center=zc,
                    z_half=0.8 * zh,
                    inside="bowel",
                )
            )
    liver_hu = rng.uniform(50, 70)
    lz = z0 + rng.uniform(30, 60)
    out.append(
        Structure(
            "liver right lobe",
            "liver",
            liver_hu,
            (cx - 0.42 * ia, cy - 0.04 * ib),
            (rng.uniform(0.48, 0.55) * ia, rng.uniform(0.68, 0.76) * ib),
            rng.uniform(-0.15, 0.3),
            z_center=lz,
            z_half=rng.uniform(120, 150),
            texture=4.0,
        )
    )
    out.append(
        Structure(
            "liver left lobe",
            "liver",
            liver_hu,
            (cx + rng.uniform(-0.05, 0.05) * ia, cy - 0.45 * ib),
            (rng.uniform(0.33, 0.4) * ia, rng.uniform(0.25, 0.3) * ib),
            rng.uniform(-0.3, 0.1),
            z_center=lz + 10.0,
            z_half=rng.uniform(80, 100),
            texture=4.0,
        )
    )
    out.append(
        Structure(
            "spleen",
            "spleen",
            rng.uniform(40, 50),
            (cx + 0.62 * ia, cy + 0.28 * ib),
            (rng.uniform(0.17, 0.22) * ia, rng.uniform(0.34, 0.4) * ib),
            -rng.uniform(0.4, 0.8),
            z_center=z0 + rng.uniform(0, 40),
            z_half=rng.uniform(60, 75),
            texture=4.0,
        )
    )
    kidney_hu = rng.uniform(30, 40)
    for side in (-1.0, 1.0):
        kx, ky = cx + side * rng.uniform(0.34, 0.4) * ia, t.spine_y + rng.uniform(-5, 8)
        zc, zh = z0 + rng.uniform(-30, 15), rng.uniform(50, 60)
        ka, kb, kt = rng.uniform(22, 28), rng.uniform(32, 40), side * rng.uniform(0.3, 0.6)
        out.append(
            Structure("kidney", "kidney", kidney_hu, (kx, ky), (ka, kb), kt, z_center=zc, z_half=zh, texture=3.0)
        )
        out.append(
            Structure(
                "renal sinus fat",
                "fat",
                rng.uniform(-90, -60),
                (kx - side * 0.55 * ka, ky),
                (0.35 * ka, 0.35 * kb),
                kt,
                z_center=zc,
                z_half=0.6 * zh,
            )
        )
    for side in (-1.0, 1.0):
        out.append(
            Structure(
                "psoas",
                "muscle",
                rng.uniform(45, 58),
                (cx + side * (t.vertebra_r + rng.uniform(14, 18)), t.spine_y + 2.0),
                (rng.uniform(11, 15), rng.uniform(13, 17)),
                z_center=z0,
                taper=-0.004,
                texture=3.0,
            )
        )
    out += _spine(rng, t, z0)
    out.append(
        Structure(
            "abdominal aorta",
            "aorta",
            rng.uniform(150, 250),
            (cx + rng.uniform(8, 16), t.spine_y - t.vertebra_r - rng.uniform(8, 13)),
            (rng.uniform(9, 12),) * 2,
            z_center=z0,
        )
    )
    out.append(
        Structure(
            "inferior vena cava",
            "ivc",
            rng.uniform(70, 110),
            (cx - rng.uniform(18, 26), t.spine_y - t.vertebra_r - rng.uniform(4, 10)),
            (rng.uniform(10, 14), rng.uniform(7, 10)),
            z_center=z0,
        )
    )
    out += _table(t)
    return out, t


def _lesion_specs(rng: np.random.Generator, body_part: str, organ_hu: dict[str, float]) -> list[_LesionSpec]:
    """(organ, kind, radius_mm, contrast_hu) for each lesion to place."""
    specs: list[_LesionSpec] = []

    def signed(lo: float, hi: float) -> float:
        return float(rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi))

    if body_part == "chest":
        for _ in range(int(rng.integers(2, 5))):
            hu = rng.uniform(-20, 60)
            specs.append(("lung", "solid nodule", rng.uniform(1.5, 6.0), hu - organ_hu["lung"]))
        for _ in range(int(rng.integers(0, 3))):
            specs.append(("lung", "ground-glass nodule", rng.uniform(3.0, 6.0), rng.uniform(250, 400)))
    else:
        for _ in range(int(rng.integers(3, 7))):
            c = signed(5, 30)
            specs.append(("liver", "hypodense" if c < 0 else "hyperdense", rng.uniform(1.5, 6.0), c))
        for _ in range(int(rng.integers(0, 3))):
            c = signed(10, 30)
            specs.append(("kidney", "cyst" if c < 0 else "hyperdense", rng.uniform(2.0, 6.0), c))
        if rng.uniform() < 0.5:
            c = signed(5, 25)
            specs.append(("spleen", "hypodense" if c < 0 else "hyperdense", rng.uniform(2.0, 6.0), c))
    return specs


def _place_lesions(rng: np.random.Generator, anatomy: PatientAnatomy, specs: list[_LesionSpec]) -> tuple[Lesion, ...]:
    """Put each lesion well inside its organ at a random z of the extent (why: truth must be unambiguous)."""
    organ_hu = {s.label: s.hu for s in reversed(anatomy.structures)}
    coords = _grid(_PLACEMENT_SIZE, _PLACEMENT_SPACING_MM)
    placed: list[Lesion] = []
    z_lo, z_hi = anatomy.z_extent_mm
    for organ, kind, radius, contrast in specs:
        for _attempt in range(20):
            z = float(rng.uniform(z_lo, z_hi))
            labels = render_slice_with_labels(
                anatomy, z, _PLACEMENT_SIZE, _PLACEMENT_SPACING_MM, with_hu=False, with_lesions=False
            ).labels
            ok = labels == LABEL_IDS[organ]
            for other in placed:
                dz = abs(z - other.center_mm[2])
                if dz < other.radius_mm + radius + 2.0:
                    d2 = (coords[None, :] - other.center_mm[0]) ** 2 + (coords[:, None] - other.center_mm[1]) ** 2
                    ok &= d2 > (other.radius_mm + radius + 2.0) ** 2
            depth = ndimage.distance_transform_edt(ok) * _PLACEMENT_SPACING_MM
            rows, cols = np.nonzero(depth >= radius + 3.0)
            if rows.size:
                k = int(rng.integers(rows.size))
                placed.append(
                    Lesion(
                        index=len(placed),
                        organ=organ,
                        kind=kind,
                        center_mm=(float(coords[cols[k]]), float(coords[rows[k]]), z),
                        radius_mm=float(radius),
                        contrast_hu=float(contrast),
                        hu=float(organ_hu[organ] + contrast),
                    )
                )
                break
        else:
            log.debug("no room for a %.1f mm %s lesion in %s; skipped", radius, kind, organ)
    return tuple(placed)


def make_patient(
    rng: np.random.Generator, body_part: str, z_extent_mm: tuple[float, float] = (-60.0, 60.0)
) -> PatientAnatomy:
    """Draw one patient (body size, organ sizes and positions, lesions) for slices within z_extent_mm."""
    if body_part not in BODY_PARTS:
        raise ValueError(f"body_part must be one of {BODY_PARTS}, not {body_part!r}")
    z0 = 0.5 * (z_extent_mm[0] + z_extent_mm[1])
    structures, trunk = (_chest if body_part == "chest" else _abdomen)(rng, z0)
    anatomy = PatientAnatomy(
        body_part=body_part,
        structures=tuple(structures),
        lesions=(),
        texture=_texture(rng),
        z_extent_mm=(float(z_extent_mm[0]), float(z_extent_mm[1])),
        body_axes_mm=(trunk.a, trunk.b),
    )
    organ_hu = {s.label: s.hu for s in reversed(structures)}
    lesions = _place_lesions(rng, anatomy, _lesion_specs(rng, body_part, organ_hu))
    log.debug("patient %s: %d structures, %d lesions", body_part, len(structures), len(lesions))
    return replace(anatomy, lesions=lesions)
