"""Picture grids for people: windowed HU slices side by side with a zoomed inset, and training patch triplets.

Why: PSNR and SSIM average away what a radiologist worries about (a GAN adding or erasing a small structure,
plastic-looking texture). A montage in the clinical windows, with the same region magnified in every column,
makes that visible. Pixels are shown 1:1 (no resampling of the tiles); the inset uses nearest-neighbour zoom so
noise grain is not smoothed by the display. 8-bit output is for the picture only; the data path stays in HU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

Window = tuple[float, float, str]  # level (centre) HU, width HU, name
DEFAULT_WINDOWS: tuple[Window, ...] = ((40.0, 400.0, "soft tissue"), (-600.0, 1500.0, "lung"))
MARGIN = 4  # px between tiles and around the grid
TITLE_HEIGHT = 16  # px caption band above every row of tiles
INSET_COLOUR = (255, 210, 0)
BACKGROUND = (0, 0, 0)
TEXT_COLOUR = (255, 255, 255)


def window_to_uint8(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU → 0…255 through a display window (level, width), clipped outside it."""
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float64) - lo) / width
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """Model range [-1, 1] → 0…255 (training patches are already normalised)."""
    return np.round(np.clip((np.asarray(x, dtype=np.float64) + 1.0) * 0.5, 0.0, 1.0) * 255.0).astype(np.uint8)


def montage_size(tile_shape: tuple[int, int], n_columns: int, n_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of n_rows × n_columns tiles, each under its caption band."""
    h, w = tile_shape
    return n_columns * w + (n_columns + 1) * MARGIN, n_rows * (TITLE_HEIGHT + h) + (n_rows + 1) * MARGIN


def _fit_text(
    draw: ImageDraw.ImageDraw, texts: Sequence[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> str:
    """The first of the candidate captions (longest first) that fits the tile width, else the last one cut short."""
    for text in texts:
        if draw.textlength(text, font=font) <= width:
            return text
    text = texts[-1]
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def _grid(
    path: Path | str, tiles: list[list[np.ndarray]], captions: list[list[list[str]]], insets: list[list[tuple] | None]
) -> None:
    """Compose uint8 RGB tiles (all one shape) into the captioned grid and write a PNG."""
    h, w = tiles[0][0].shape[:2]
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    canvas = Image.new("RGB", montage_size((h, w), n_cols, n_rows), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, row in enumerate(tiles):
        top = MARGIN + r * (TITLE_HEIGHT + h + MARGIN)
        for c, tile in enumerate(row):
            left = MARGIN + c * (w + MARGIN)
            draw.text((left + 1, top + 2), _fit_text(draw, captions[r][c], font, w - 2), fill=TEXT_COLOUR, font=font)
            canvas.paste(Image.fromarray(tile, mode="RGB"), (left, top + TITLE_HEIGHT))
            for box in insets[r] or []:
                y0, x0, y1, x1 = box
                draw.rectangle(
                    (left + x0, top + TITLE_HEIGHT + y0, left + x1, top + TITLE_HEIGHT + y1), outline=INSET_COLOUR
                )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    log.info("wrote montage %s (%d×%d tiles of %d×%d px)", path, n_rows, n_cols, h, w)


def _inset_geometry(shape: tuple[int, int], inset: tuple[int, int, int], zoom: int) -> tuple[int, int, int, int, int]:
    """(y, x, size, zoom, corner) with the region clipped to the image, zoom reduced until the inset fits, and
    the corner (0 TL, 1 TR, 2 BL, 3 BR) farthest from the region so the inset never hides it."""
    h, w = shape
    y, x, size = (int(v) for v in inset)
    size = max(1, min(size, h, w))
    y, x = min(max(0, y), h - size), min(max(0, x), w - size)
    fit = max(1, min(zoom, (h - 2) // size, (w - 2) // size))
    if fit != zoom:
        log.warning("inset of %d px zoomed ×%d would not fit a %d×%d tile: using ×%d", size, zoom, h, w, fit)
    cy, cx = y + size / 2.0, x + size / 2.0
    corners = [(0.0, 0.0), (0.0, float(w)), (float(h), 0.0), (float(h), float(w))]
    corner = int(np.argmax([(cy - a) ** 2 + (cx - b) ** 2 for a, b in corners]))
    return y, x, size, fit, corner


def _with_inset(tile: np.ndarray, y: int, x: int, size: int, zoom: int, corner: int) -> tuple[np.ndarray, list[tuple]]:
    """Paste the nearest-neighbour zoom of tile[y:y+size, x:x+size] in a corner; return the boxes to outline."""
    h, w = tile.shape[:2]
    patch = tile[y : y + size, x : x + size].repeat(zoom, axis=0).repeat(zoom, axis=1)
    ph, pw = patch.shape[:2]
    top = 1 if corner in (0, 1) else h - ph - 1
    left = 1 if corner in (0, 2) else w - pw - 1
    out = tile.copy()
    out[top : top + ph, left : left + pw] = patch
    return out, [(y, x, y + size - 1, x + size - 1), (top - 1, left - 1, top + ph, left + pw)]


def save_montage(
    path: Path | str,
    columns: dict[str, np.ndarray],
    windows: Sequence[Window] = DEFAULT_WINDOWS,
    inset: tuple[int, int, int] | None = None,
    zoom: int = 3,
) -> None:
    """PNG grid: one row per display window (level, width, name), one column per HU image (e.g. LD | model | HD |
    noise-free), each tile captioned; with `inset` = (y, x, size) in image pixels, that region is outlined and shown
    magnified ×zoom (nearest neighbour) in the corner farthest from it, identically in every tile."""
    if not columns:
        raise ValueError("save_montage needs at least one column")
    if not windows:
        raise ValueError("save_montage needs at least one display window")
    shapes = {np.shape(a) for a in columns.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all columns must be 2-D images of one shape, got {sorted(shapes)}")
    shape = next(iter(shapes))
    geometry = _inset_geometry(shape, inset, zoom) if inset is not None else None
    tiles, captions, boxes = [], [], []
    for level, width, name in windows:
        row_tiles, row_boxes = [], None
        for image in columns.values():
            grey = window_to_uint8(image, level, width)
            rgb = np.repeat(grey[:, :, None], 3, axis=2)
            if geometry is not None:
                rgb, row_boxes = _with_inset(rgb, *geometry)
            row_tiles.append(rgb)
        tiles.append(row_tiles)
        captions.append([[f"{title} · {name} W{width:g} L{level:g}", f"{title} · {name}", title] for title in columns])
        boxes.append(row_boxes)
    _grid(path, tiles, captions, boxes)


def patch_montage(path: Path | str, rows: list[list[np.ndarray]], titles: Sequence[str] | None = None) -> None:
    """PNG grid of training-validation patches in [-1, 1], one row per example (e.g. LD | generated | HD)."""
    if not rows or not rows[0]:
        raise ValueError("patch_montage needs at least one row with one patch")
    shapes = {np.shape(p) for row in rows for p in row}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all patches must be 2-D arrays of one shape, got {sorted(shapes)}")
    n_cols = max(len(r) for r in rows)
    if titles is None:
        titles = ("LD", "generated", "HD") if n_cols == 3 else tuple(str(i) for i in range(n_cols))
    tiles = [[np.repeat(unit_to_uint8(p)[:, :, None], 3, axis=2) for p in row] for row in rows]
    captions = [[[titles[c] if c < len(titles) else ""] for c in range(len(row))] for row in rows]
    _grid(path, tiles, captions, [None] * len(rows))
