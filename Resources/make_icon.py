#!/usr/bin/env python3
"""Draw the MedXAI module icon: an axial brain slice with a warm attribution "heat" blob.

Pure standard library (zlib + struct write the PNG), so it runs anywhere without Pillow:

    python Resources/make_icon.py                       # writes MedXAI/Resources/Icons/MedXAI.png
    python Resources/make_icon.py out.png --size 256    # another path or size

The drawing is defined in normalised coordinates (x, y in [-1, 1], y pointing down) and
rendered with 4x4 supersampling, so any size comes out anti-aliased. Slicer wants 128x128
for both the module icon and the extension's EXTENSION_ICONURL.
"""

from __future__ import annotations

import argparse
import math
import struct
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "MedXAI" / "Resources" / "Icons" / "MedXAI.png"

Color = tuple[float, float, float, float]  # straight (non-premultiplied) RGBA in [0, 1]

BACKGROUND_TOP = (0.13, 0.19, 0.29)
BACKGROUND_BOTTOM = (0.06, 0.09, 0.15)
SKULL = (0.92, 0.94, 0.96)
TISSUE = (0.55, 0.60, 0.66)
SULCUS = (0.30, 0.34, 0.40)
VENTRICLE = (0.16, 0.19, 0.24)

# Heat blobs: (centre x, centre y, sigma, weight). Right frontal lobe plus a satellite.
HEAT_BLOBS = ((0.26, -0.30, 0.20, 1.0), (0.36, 0.10, 0.13, 0.50))
HEAT_THRESHOLD = 0.18  # below this the overlay is transparent, like a thresholded Slicer layer


def _smoothstep(edge0: float, edge1: float, x: float) -> float:
    t = min(1.0, max(0.0, (x - edge0) / (edge1 - edge0)))
    return t * t * (3.0 - 2.0 * t)


def _ellipse(x: float, y: float, cx: float, cy: float, a: float, b: float) -> float:
    """Normalised radius: < 1 inside the ellipse."""
    return math.hypot((x - cx) / a, (y - cy) / b)


def _rounded_square(x: float, y: float, half: float, radius: float) -> bool:
    qx = abs(x) - (half - radius)
    qy = abs(y) - (half - radius)
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    return outside + min(max(qx, qy), 0.0) - radius <= 0.0


def _hot(t: float) -> tuple[float, float, float]:
    """A warm colour map: dark red -> orange -> pale yellow."""
    stops = ((0.0, (0.55, 0.05, 0.05)), (0.45, (0.93, 0.25, 0.05)), (0.75, (1.0, 0.62, 0.10)),
             (1.0, (1.0, 0.96, 0.60)))
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            w = (t - t0) / (t1 - t0)
            return tuple(c0[i] + (c1[i] - c0[i]) * w for i in range(3))  # type: ignore[return-value]
    return stops[-1][1]


def _over(dst: Color, rgb: tuple[float, float, float], alpha: float) -> Color:
    """Composite a colour with coverage `alpha` over `dst` (straight alpha)."""
    if alpha <= 0.0:
        return dst
    dr, dg, db, da = dst
    out_a = alpha + da * (1.0 - alpha)
    if out_a <= 0.0:
        return (0.0, 0.0, 0.0, 0.0)
    k = da * (1.0 - alpha)
    return ((rgb[0] * alpha + dr * k) / out_a, (rgb[1] * alpha + dg * k) / out_a,
            (rgb[2] * alpha + db * k) / out_a, out_a)


def shade(x: float, y: float) -> Color:
    """Colour of the icon at normalised point (x, y)."""
    if not _rounded_square(x, y, 0.97, 0.24):
        return (0.0, 0.0, 0.0, 0.0)
    g = (y + 1.0) / 2.0
    color: Color = (*(BACKGROUND_TOP[i] + (BACKGROUND_BOTTOM[i] - BACKGROUND_TOP[i]) * g
                      for i in range(3)), 1.0)  # type: ignore[assignment]

    skull = _ellipse(x, y, 0.0, 0.02, 0.70, 0.84)
    brain = _ellipse(x, y, 0.0, 0.02, 0.60, 0.74)
    if skull <= 1.0:
        color = _over(color, SKULL, 1.0)
    if brain <= 1.0:
        color = _over(color, TISSUE, 1.0)
        # Gyri: wavy folds that follow the brain outline, strongest near the cortex.
        angle = math.atan2(y, abs(x))  # mirror the folds across the midline
        fold = math.cos(brain * 30.0 + 1.7 * math.sin(9.0 * angle) + 0.9 * math.sin(23.0 * angle))
        color = _over(color, SULCUS, 0.7 * _smoothstep(0.72, 0.97, fold) * _smoothstep(0.40, 0.80, brain))
        # Interhemispheric fissure (front and back).
        if abs(x) < 0.022 and (y < -0.28 or y > 0.40):
            color = _over(color, SULCUS, 0.9)
        # Lateral ventricles: two crescents, bulging towards the midline, like ")(".
        for side in (-1.0, 1.0):
            if (_ellipse(x, y, side * 0.13, 0.04, 0.11, 0.25) <= 1.0
                    and _ellipse(x, y, side * 0.20, 0.04, 0.11, 0.28) > 1.0):
                color = _over(color, VENTRICLE, 1.0)
        # Attribution heat, only inside the brain.
        heat = sum(w * math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * s * s))
                   for cx, cy, s, w in HEAT_BLOBS)
        if heat > HEAT_THRESHOLD:
            t = (heat - HEAT_THRESHOLD) / (1.0 - HEAT_THRESHOLD)
            color = _over(color, _hot(t), min(0.92, 0.15 + 1.2 * t) * _smoothstep(0.0, 0.12, t))
    return color


def render(size: int, samples: int = 4) -> bytes:
    """RGBA8 rows of the icon, each prefixed by PNG filter type 0."""
    raw = bytearray()
    n = samples * samples
    for row in range(size):
        raw.append(0)
        for col in range(size):
            acc = [0.0, 0.0, 0.0, 0.0]
            for sy in range(samples):
                for sx in range(samples):
                    x = ((col + (sx + 0.5) / samples) / size) * 2.0 - 1.0
                    y = ((row + (sy + 0.5) / samples) / size) * 2.0 - 1.0
                    r, g, b, a = shade(x, y)
                    acc[0] += r * a
                    acc[1] += g * a
                    acc[2] += b * a
                    acc[3] += a
            alpha = acc[3] / n
            if alpha > 0.0:
                rgb = [acc[i] / acc[3] for i in range(3)]
            else:
                rgb = [0.0, 0.0, 0.0]
            raw.extend(int(round(255.0 * min(1.0, max(0.0, v)))) for v in (*rgb, alpha))
    return bytes(raw)


def png_bytes(width: int, height: int, rgba_rows: bytes) -> bytes:
    """Encode filtered RGBA8 rows as a PNG file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rgba_rows, 9)) + chunk(b"IEND", b""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--size", type=int, default=128, help="width and height in pixels")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(png_bytes(args.size, args.size, render(args.size)))
    print(f"wrote {args.output} ({args.size}x{args.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
