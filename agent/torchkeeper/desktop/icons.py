"""The tray's icon images: icons/<state>-<size>.png, drawn by icons/make_icons.py.

Pillow is imported only when an image is loaded: the headless agent never needs it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..daemon import view
from ..errors import NotFound
from ..home import icons_dir
from ..i18n import _

SIZES = (16, 20, 24, 32, 48, 64, 128, 256)   # what make_icons.py draws

_REGENERATE = "reinstall torchkeeper; in a source checkout run: python icons/make_icons.py"


def pick_size(size: int) -> int:
    """The smallest drawn size >= size (the largest one for anything bigger): downscaling a
    slightly larger drawing looks better than upscaling a smaller one."""
    return next((s for s in SIZES if s >= size), SIZES[-1])


def load(state: str, size: int = 64, directory: Path | None = None):
    """The icon for an overall state as a PIL RGBA image of size x size.

    The image is cached and shared: callers must not draw on it (copy it first).
    Raises NotFound, naming the file, when the icon is missing or unreadable.
    """
    if state not in view.ICON_STATES:
        raise ValueError(f"unknown icon state {state!r}; one of {', '.join(view.ICON_STATES)}")
    if size < 1:
        raise ValueError(f"icon size must be positive, not {size}")
    return _load(state, size, Path(directory) if directory else icons_dir())


@functools.lru_cache(maxsize=64)
def _load(state: str, size: int, directory: Path):
    from PIL import Image, UnidentifiedImageError

    path = directory / f"{state}-{pick_size(size)}.png"
    try:
        with Image.open(path) as im:
            im = im.convert("RGBA")  # stored indexed; pystray and callers want RGBA
    except FileNotFoundError:
        raise NotFound(_("tray icon %(path)s is missing") % {"path": path}, _REGENERATE) from None
    except (OSError, UnidentifiedImageError) as e:
        raise NotFound(
            _("tray icon %(path)s cannot be read: %(e)s") % {"path": path, "e": e}, _REGENERATE
        ) from None
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return im


def clear_cache() -> None:
    _load.cache_clear()
