"""What every page of the report shares: the style sheet, images as data URIs or as files written once
beside the pages, grids of example images, and matplotlib figures as PNG bytes."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left} .row{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}
.panel{border:3px solid #e8a0c8;padding:4px;font-size:12px} .parent{border-color:#e8c840}
.grid{display:grid;gap:2px;justify-content:start} .ranked tr:last-child{background:#f4e4f0} .unl{color:#999} .score{color:#666}
table.sortable th{cursor:pointer;background:#f4f4f4} th[data-dir=asc]::after{content:" \\25B2"}
th[data-dir=desc]::after{content:" \\25BC"} nav{margin:8px 0}
.contexts{max-width:34em} .ctx{font-family:monospace;white-space:pre-wrap;font-size:11px;margin:3px 0;line-height:1.5}
.ctx .fire{outline:1px solid #c00;font-weight:bold} .ctx .special{color:#aaa}"""


def bytes_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_data_uri(img: np.ndarray, scale: int = 6) -> str:
    from PIL import Image

    im = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return bytes_data_uri(buf.getvalue())


@dataclass
class ImageFile:
    """An evaluation image written once beside the pages (:func:`elude.reporting.pages.image_files`)."""
    src: str  # relative to the page
    height: int
    width: int


def _cell(thumbnail, i: int) -> str:
    """``thumbnail(i)``: a uint8 array (inlined as a data URI), an :class:`ImageFile`, or None."""
    img = thumbnail(int(i))
    if img is None:  # a dataset without images (e.g. text from a factory): its index
        return f'<span class="ex">example {int(i)}</span>'
    if isinstance(img, ImageFile):  # tiny images enlarged like the inlined ones, pixels kept sharp
        scale = max(1, 48 // img.height)
        return (f'<img src="{img.src}" width="{img.width * scale}" height="{img.height * scale}" '
                f'style="image-rendering:pixelated" title="eval example {int(i)}">')
    return f'<img src="{png_data_uri(img, scale=max(1, 48 // img.shape[0]))}" title="eval example {int(i)}">'


def _grid(thumbnail, ids, cols: int, cls: str) -> str:
    cells = "".join(_cell(thumbnail, i) for i in ids)
    return f'<div class="grid {cls}" style="grid-template-columns: repeat({cols}, auto)">{cells}</div>'


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
