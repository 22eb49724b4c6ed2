"""How notebooks show plotly figures: interactive in JupyterLab, rendered offline in the static book."""

from __future__ import annotations


def setup() -> None:
    """Call once at the top of a notebook. (Placeholder; the book's renderer replaces this.)"""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"
