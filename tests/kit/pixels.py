"""Pixels of a Pillow image as tuples, the same on every Pillow the project allows (10.0 to 13):
getdata() is deprecated in the newest, get_flattened_data() is missing from the oldest."""

from __future__ import annotations


def pixels(im) -> list[tuple[int, ...]]:
    """Every pixel of an 8-bit-per-band image (RGB, RGBA, L), row by row."""
    bands = len(im.getbands())
    data = im.tobytes()
    return [tuple(data[i:i + bands]) for i in range(0, len(data), bands)]
