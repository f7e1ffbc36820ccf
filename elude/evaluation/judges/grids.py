"""The judges' grids (Section B.1): a unit's top-9 evaluation images as a 3x3 collage, 336x336 px per cell."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CELL = 336  # pixels per cell (B.1)
EMPTY = 127  # grey for a cell without an image (a unit with fewer than 9 top images)


def cell_image(img: np.ndarray | None, cell: int = CELL) -> np.ndarray:
    """One image as a (cell, cell, 3) uint8 tile: grey and single-channel images become RGB, the shorter
    side is resized to ``cell`` (bicubic; nearest when enlarging tiny images such as 8x8 digits, so their
    pixels stay visible) and the longer one centre-cropped."""
    from PIL import Image

    if img is None:
        return np.full((cell, cell, 3), EMPTY, np.uint8)
    a = np.asarray(img)
    if a.dtype != np.uint8:  # e.g. digits in 0..16, or floats: stretch to 0..255
        a = a.astype(np.float64)
        span = a.max() - a.min()
        a = ((a - a.min()) / span * 255 if span > 0 else np.zeros_like(a)).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    im = Image.fromarray(a).convert("RGB")
    scale = cell / min(im.size)
    size = (max(cell, round(im.size[0] * scale)), max(cell, round(im.size[1] * scale)))
    im = im.resize(size, Image.NEAREST if scale >= 4 else Image.BICUBIC)
    left, top = (size[0] - cell) // 2, (size[1] - cell) // 2
    return np.asarray(im.crop((left, top, left + cell, top + cell)), dtype=np.uint8)


def grid_image(images: list[np.ndarray | None], cell: int = CELL, side: int = 3) -> np.ndarray:
    """``side`` x ``side`` collage (row by row, best first) of the first side^2 ``images``; missing ones grey."""
    tiles = [cell_image(img, cell) for img in list(images)[: side * side]]
    tiles += [cell_image(None, cell)] * (side * side - len(tiles))
    rows = [np.concatenate(tiles[r * side : (r + 1) * side], axis=1) for r in range(side)]
    return np.concatenate(rows, axis=0)


def save_grid(path: str | Path, images: list[np.ndarray | None], cell: int = CELL) -> None:
    """The grid as a PNG (written to a temporary sibling, then renamed: a killed job leaves no half file)."""
    from PIL import Image

    from ...util.files import write_atomic

    write_atomic(Path(path), lambda tmp: Image.fromarray(grid_image(images, cell)).save(tmp, format="PNG"))
