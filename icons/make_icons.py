"""Draws torchkeeper's tray icons: one round badge per state, at every size a tray may ask for.

    python icons/make_icons.py          # writes icons/<state>-<size>.png and icons/torchkeeper.ico

Needs only Pillow. The design rules are in icons/README.md; in short:

* a coloured disc with a dark outline and a light inner stroke, so its edge shows on light
  *and* dark taskbars, on a transparent background;
* a glyph that contrasts with the disc (white, dark on amber), drawn with thicker strokes at
  16/20/24 px and snapped to whole pixels there, so it stays crisp;
* everything drawn at 4x and box-filtered down (exact coverage anti-aliasing);
* stored as indexed PNGs with per-colour alpha: each icon has under 256 colours, so this is
  lossless, and a third the size of RGBA PNGs (icons/ stays well under 150 KB).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZES = (16, 20, 24, 32, 48, 64, 128, 256)
SMALL = 24          # sizes up to this get the thicker, pixel-snapped glyph
SS = 4              # supersampling factor

OUTLINE = (24, 24, 28, 255)        # dark ring: visible on light taskbars
INNER = (255, 255, 255, 235)       # light ring inside it: visible on dark taskbars
WHITE = (255, 255, 255, 255)
DARK = (32, 26, 8, 255)

# state -> (disc fill, glyph colour); the fill is what tests and screenshots look for
STATES = {
    "ok": ((40, 160, 70, 255), WHITE),
    "attention": ((245, 170, 20, 255), DARK),   # white on amber is too faint: dark glyph
    "error": ((214, 45, 45, 255), WHITE),
    "working": ((37, 99, 235, 255), WHITE),
    "paused": ((100, 108, 122, 255), WHITE),
}


# Up to 32 px: (inset, outline, inner stroke) in output pixels, chosen so the rings stay
# visible all round. A 1 px ring on a small circle is smeared over two pixels at most angles
# and fades; tests/test_icons.py measures the edge's contrast on white and black.
_SMALL_RINGS = {16: (0.0, 1.25, 1.25), 20: (0.25, 1.5, 1.25), 24: (0.25, 1.5, 1.25),
                32: (0.25, 1.5, 1.25)}


def _rings(size: int) -> tuple[float, float, float]:
    """(inset of the disc from the canvas edge, outline width, inner-stroke width)."""
    if size in _SMALL_RINGS:
        return _SMALL_RINGS[size]
    if size <= 32:
        return 0.25, 1.5, 1.25
    return size / 64, max(1, round(size / 24)), max(1, round(size / 32))


def _glyph_width(size: int) -> float:
    """Glyph stroke width in output pixels: relatively thicker on small icons, whole pixels
    there so vertical/horizontal strokes land on the pixel grid."""
    if size <= SMALL:
        return 2.0 if size < 24 else 3.0
    return size * 0.1


class _Pen:
    """Draws in output-pixel coordinates on a canvas SS times larger."""

    def __init__(self, draw: ImageDraw.ImageDraw, size: int):
        self.d = draw
        self.size = size

    def _p(self, x: float, y: float) -> tuple[float, float]:
        return x * SS, y * SS

    def disc(self, cx: float, cy: float, r: float, fill) -> None:
        self.d.ellipse([*self._p(cx - r, cy - r), *self._p(cx + r, cy + r)], fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill) -> None:
        self.d.rectangle([*self._p(x0, y0), *self._p(x1, y1)], fill=fill)

    def line(self, points: list[tuple[float, float]], width: float, fill, round_caps=True) -> None:
        pts = [self._p(x, y) for x, y in points]
        self.d.line(pts, fill=fill, width=max(1, round(width * SS)), joint="curve")
        if round_caps:
            for x, y in points:
                self.disc(x, y, width / 2, fill)


def draw_icon(state: str, size: int) -> Image.Image:
    fill, ink = STATES[state]
    canvas = Image.new("RGBA", (size * SS, size * SS), (0, 0, 0, 0))
    pen = _Pen(ImageDraw.Draw(canvas), size)
    small = size <= SMALL
    c = size / 2
    # the disc (nearly) fills the canvas: a tray icon is small enough already
    inset, outline, inner = _rings(size)
    r = c - inset
    pen.disc(c, c, r, OUTLINE)
    pen.disc(c, c, r - outline, INNER)
    R = r - outline - inner     # the coloured face: the glyph is laid out in units of it
    pen.disc(c, c, R, fill)

    def at(fx: float, fy: float) -> tuple[float, float]:
        return c + fx * R, c + fy * R

    def snap(v: float) -> float:
        return float(round(v)) if small else v

    w = _glyph_width(size)
    if state == "ok":
        pen.line([at(-0.52, 0.05), at(-0.14, 0.42), at(0.54, -0.36)], w, ink)
    elif state == "error":
        a = 0.4
        pen.line([at(-a, -a), at(a, a)], w, ink)
        pen.line([at(-a, a), at(a, -a)], w, ink)
    elif state == "attention":
        # a stem and a dot; the stem's edges on whole pixels when small
        x0, x1 = snap(c - w / 2), snap(c + w / 2)
        top, bottom = snap(c - 0.66 * R), snap(c + 0.2 * R)
        pen.rect(x0, top, x1 - 1 / SS, bottom - 1 / SS, ink)
        dot = w if small else max(w, size * 0.12)
        pen.disc(c, c + 0.58 * R, dot / 2 + (0.25 if small else 0), ink)
    elif state == "working":
        # three dots: reads as "busy" at every size, unlike a tiny spinner
        if small:   # 2 px dots a whole number of pixels apart, so the gaps stay open
            rad, step = (1.0 if size < 24 else 1.25), round(0.52 * R)
        else:
            rad, step = max(w * 0.6, 0.17 * R), 0.52 * R
        for dx in (-step, 0, step):
            pen.disc(c + dx, c, rad, ink)
    elif state == "paused":
        bw = snap(max(w, 0.27 * R))
        gap = (2.0 if size < 24 else 3.0) if small else 0.24 * R
        top, bottom = snap(c - 0.52 * R), snap(c + 0.52 * R)
        left = snap(c - gap / 2 - bw)
        pen.rect(left, top, left + bw - 1 / SS, bottom - 1 / SS, ink)
        right = left + bw + gap
        pen.rect(right, top, right + bw - 1 / SS, bottom - 1 / SS, ink)
    else:
        raise ValueError(f"unknown state {state!r}")
    # box filter = exact 4x4 coverage anti-aliasing: no LANCZOS ringing halos at the ring
    # edges, and few enough colours (< 256) for a lossless indexed PNG
    return canvas.reduce(SS)


def indexed(im: Image.Image) -> Image.Image:
    """The same pixels as an indexed image with an RGBA palette, exactly (no quantizing)."""
    colours: dict[tuple, int] = {}
    idx = [colours.setdefault(px, len(colours)) for px in _pixels(im)]
    if len(colours) > 256:
        raise ValueError(f"{len(colours)} colours: too many for a lossless indexed PNG")
    out = Image.new("P", im.size)
    out.putpalette([c for px in colours for c in px], rawmode="RGBA")
    out.putdata(idx)
    return out


def main(out: Path = HERE) -> int:
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for state in STATES:
        for size in SIZES:
            im = draw_icon(state, size)
            images[state, size] = im
            small = indexed(im)
            assert small.convert("RGBA").tobytes() == im.tobytes()  # lossless, as promised
            small.save(out / f"{state}-{size}.png", optimize=True)
    # the installer's / shortcut's icon: every size in one .ico, each frame drawn for its size;
    # frames stay 32-bit RGBA, the format every Windows icon loader reads
    ok = [images["ok", s] for s in SIZES]
    ok[-1].save(out / "torchkeeper.ico", format="ICO", sizes=[(s, s) for s in SIZES],
                append_images=ok[:-1])
    total = sum(f.stat().st_size for f in out.iterdir() if f.suffix in (".png", ".ico"))
    print(f"wrote {len(images)} PNGs and torchkeeper.ico to {out} ({total // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))


def _pixels(im) -> list[tuple[int, ...]]:
    """Pixels as tuples on any Pillow from 10 on (getdata() is deprecated, get_flattened_data() new)."""
    bands = len(im.getbands())
    data = im.tobytes()
    return [tuple(data[i:i + bands]) for i in range(0, len(data), bands)]
