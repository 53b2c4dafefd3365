"""What every HTML report shares: the autoescaping Jinja2 environment, image data URIs, inline SVG plots and
number formatting. Nothing from a model, a file or an LLM is marked safe; only SVG drawn here from numbers is."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import jinja2
from PIL import Image

__all__ = ["data_uri", "environment", "fmt", "svg"]


def environment() -> jinja2.Environment:
    """The reports' Jinja2 environment: package templates, autoescaping everywhere, strict undefined."""
    return jinja2.Environment(loader=jinja2.PackageLoader("cfx.reports", "templates"),
                              autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def data_uri(png: bytes | None, max_side: int = 128) -> str | None:
    """PNG bytes → data URI; large images are shrunk to ``max_side`` and sent as JPEG to keep the report small."""
    if png is None:
        return None
    img = Image.open(io.BytesIO(png))
    if max(img.size) <= max_side:
        return "data:image/png;base64," + base64.b64encode(png).decode()
    img = img.convert("RGB")
    img.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def svg(fig) -> str:
    """A matplotlib figure as inline SVG text (closed afterwards; no timestamps, so reports are reproducible)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    import matplotlib.pyplot as plt  # lazy: the caller chose the headless back-end before drawing

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed digits for floats, a dash for None and non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
