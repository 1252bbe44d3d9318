"""The tray icons (icons/, drawn by icons/make_icons.py) and torchkeeper.desktop.icons.load()."""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
from kit.pixels import pixels
from PIL import Image

from torchkeeper.desktop import icons
from torchkeeper.daemon import view
from torchkeeper.errors import NotFound

REPO = Path(__file__).resolve().parent.parent
ICONS = REPO / "icons"
SIZES = (16, 20, 24, 32, 48, 64, 128, 256)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def _make_icons():
    spec = importlib.util.spec_from_file_location("make_icons", ICONS / "make_icons.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_icons = _make_icons()


def lum(px) -> float:
    r, g, b = px[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def on(bg, im: Image.Image) -> Image.Image:
    """im composited on a solid background, as a taskbar shows it."""
    out = Image.new("RGBA", im.size, bg + (255,))
    out.alpha_composite(im)
    return out.convert("RGB")


def opened(state: str, size: int) -> Image.Image:
    with Image.open(ICONS / f"{state}-{size}.png") as im:
        im.load()
        return im


def fill_of(state: str) -> tuple:
    return make_icons.STATES[state][0][:3]


@pytest.fixture(autouse=True)
def _fresh_cache():
    icons.clear_cache()
    yield
    icons.clear_cache()


def test_states_match_the_view_contract():
    assert tuple(make_icons.STATES) == view.ICON_STATES
    assert make_icons.SIZES == icons.SIZES == SIZES


@pytest.mark.parametrize("state", view.ICON_STATES)
@pytest.mark.parametrize("size", SIZES)
def test_icon_exists_with_alpha_and_transparent_corners(state, size):
    path = ICONS / f"{state}-{size}.png"
    assert path.is_file(), f"{path} missing: run python icons/make_icons.py"
    raw = opened(state, size)
    assert raw.size == (size, size)
    # stored as indexed PNG with an alpha palette (smaller); it must carry alpha either way
    assert raw.mode == "RGBA" or (raw.mode == "P" and "transparency" in raw.info), raw.mode
    im = icons.load(state, size)
    assert im.mode == "RGBA" and im.size == (size, size)
    for corner in ((0, 0), (size - 1, 0), (0, size - 1), (size - 1, size - 1)):
        assert im.getpixel(corner)[3] == 0, f"{path.name}: corner {corner} is not transparent"
    # and the badge itself is opaque: the centre's alpha
    assert im.getpixel((size // 2, size // 2))[3] == 255


@pytest.mark.parametrize("size", SIZES)
def test_states_are_distinct_and_coloured_as_designed(size):
    dominant = {}
    for state in view.ICON_STATES:
        im = icons.load(state, size)
        opaque = [px[:3] for px in pixels(im) if px[3] == 255]
        dominant[state] = Counter(opaque).most_common(1)[0][0]
        assert dominant[state] == fill_of(state), f"{state}-{size}: badge colour {dominant[state]}"
    for a, b in itertools.combinations(view.ICON_STATES, 2):
        assert icons.load(a, size).tobytes() != icons.load(b, size).tobytes()
        # different enough in colour to tell apart at a glance, not only in the glyph
        assert math.dist(dominant[a], dominant[b]) > 60, (a, b, dominant[a], dominant[b])


def _edge_contrast(im: Image.Image, bg) -> float:
    """The weakest, over 16 rays from the centre, of the strongest luminance difference from
    bg within a few pixels inside the badge's edge: is the silhouette visible on bg?"""
    size = im.size[0]
    comp = on(bg, im)
    band = max(2, round(size / 12))     # the outline + inner stroke, with anti-aliasing
    weakest = 255.0
    for k in range(16):
        dx, dy = math.cos(k * math.pi / 8), math.sin(k * math.pi / 8)
        ray = []    # every pixel the ray crosses, centre to border, once each
        for step in range(size * 2 + 1):
            x, y = math.floor(size / 2 + dx * step / 4), math.floor(size / 2 + dy * step / 4)
            if 0 <= x < size and 0 <= y < size and (not ray or ray[-1] != (x, y)):
                ray.append((x, y))
        edge = max(i for i, p in enumerate(ray) if im.getpixel(p)[3] >= 128)
        # from band px inside the edge to the first (partly transparent) pixel outside it
        rim = ray[max(0, edge - band):edge + 2]
        strongest = max(abs(lum(comp.getpixel(p)) - lum(bg)) for p in rim)
        weakest = min(weakest, strongest)
    return weakest


@pytest.mark.parametrize("state", view.ICON_STATES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("bg", [WHITE, BLACK], ids=["on-white", "on-black"])
def test_legible_on_light_and_dark_taskbars(state, size, bg):
    im = icons.load(state, size)
    # the badge's edge stands out all round: the dark outline on white, the light stroke on black
    assert _edge_contrast(im, bg) >= 120, f"{state}-{size}: edge faint on {bg}"
    comp = pixels(on(bg, im))
    alpha = [px[3] for px in pixels(im)]
    # most of the badge differs clearly from the background
    badge = [lum(px) for px, a in zip(comp, alpha) if a >= 128]
    visible = sum(abs(v - lum(bg)) > 60 for v in badge)
    assert visible / len(badge) > 0.6, f"{state}-{size}: {visible}/{len(badge)} visible on {bg}"
    # the glyph contrasts with the badge's colour: pixels in the middle far from the fill's
    # luminance (>= 3% of the icon: a "!" is the thinnest glyph, at about 4%)
    fill, m = lum(fill_of(state)), size // 5
    middle = [comp[y * size + x] for y in range(m, size - m) for x in range(m, size - m)]
    glyph = sum(abs(lum(px) - fill) > 100 for px in middle)
    assert glyph >= 0.03 * size * size, f"{state}-{size}: glyph has {glyph} contrasting px"


def test_icons_are_what_the_script_draws(tmp_path):
    """The committed PNGs are make_icons.py's output (regenerate after changing it)."""
    assert make_icons.main(tmp_path) == 0
    for state, size in itertools.product(view.ICON_STATES, SIZES):
        with Image.open(tmp_path / f"{state}-{size}.png") as fresh:
            assert fresh.convert("RGBA").tobytes() == icons.load(state, size).tobytes(), \
                f"icons/{state}-{size}.png is stale: run python icons/make_icons.py"


def test_ico_has_every_size_drawn_for_it():
    with Image.open(ICONS / "torchkeeper.ico") as ico:
        assert set(ico.info["sizes"]) == {(s, s) for s in SIZES}
        for s in (16, 24, 48):
            ico.size = (s, s)
            ico.load()
            # each frame is the ok icon drawn for that size, not a downscaled 256
            assert ico.convert("RGBA").tobytes() == icons.load(view.OK, s).tobytes()


def test_icons_folder_is_small():
    total = sum(f.stat().st_size for f in ICONS.iterdir() if f.is_file())
    assert total < 150 * 1024, f"icons/ holds {total // 1024} KiB"


def test_icons_dir_is_the_checkouts_unless_installed():
    shipped = Path(icons.__file__).resolve().parent / "_data" / "icons"
    assert icons.icons_dir() == (shipped if shipped.is_dir() else ICONS)


@pytest.mark.parametrize("asked,drawn", [(1, 16), (16, 16), (17, 20), (22, 24), (24, 24),
                                         (33, 48), (64, 64), (65, 128), (256, 256), (300, 256)])
def test_pick_size_takes_the_nearest_at_or_above(asked, drawn):
    assert icons.pick_size(asked) == drawn


def test_load_resizes_and_caches():
    assert icons.load(view.OK).size == (64, 64)          # the default
    im = icons.load(view.ERROR, 40)
    assert im.size == (40, 40) and im.mode == "RGBA"    # from the 48, scaled down
    assert im.getpixel((0, 0))[3] == 0 and im.getpixel((20, 20))[3] == 255
    assert icons.load(view.ERROR, 40) is im             # cached
    assert icons.load(view.PAUSED, 300).size == (300, 300)


def test_missing_icon_is_a_clear_error(tmp_path):
    with pytest.raises(NotFound) as e:
        icons.load(view.WORKING, 24, directory=tmp_path)
    assert str(tmp_path / "working-24.png") in e.value.message
    assert "missing" in e.value.message
    assert "make_icons.py" in e.value.hint
    assert e.value.__cause__ is None and e.value.__suppress_context__   # no chained traceback


def test_unreadable_icon_is_a_clear_error(tmp_path):
    (tmp_path / "ok-64.png").write_bytes(b"not a png")
    with pytest.raises(NotFound, match="cannot be read"):
        icons.load(view.OK, 64, directory=tmp_path)


def test_unknown_state_or_size():
    with pytest.raises(ValueError, match="unknown icon state 'fine'"):
        icons.load("fine")
    with pytest.raises(ValueError, match="positive"):
        icons.load(view.OK, 0)
