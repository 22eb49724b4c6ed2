"""How notebooks show plotly figures and widgets: interactive in JupyterLab, drawn offline in the static book."""

from __future__ import annotations

import hashlib
import itertools
import json
import os

from plotly.io.base_renderers import MimetypeRenderer

# Set to "1" by the book build (book/_ext/offline_book.py) for the kernels it starts; nothing else sets it.
BOOK_BUILD_ENV = "HDR_BOOK_BUILD"
RENDERER = "hdr"

# Plotly's own options for every figure: no link to the plotly cloud. In the static book a figure also resizes with
# the page ("responsive"): its div there has a fixed height. Not in JupyterLab: there plotly would set the figure's
# container to height 100% of an output area that has no height of its own, and the figure would collapse to 0 px
# as soon as a slider or a legend entry redraws it.
PLOTLY_CONFIG = {"displaylogo": False}
BOOK_PLOTLY_CONFIG = {**PLOTLY_CONFIG, "responsive": True}


def in_book_build() -> bool:
    """True inside a kernel started by the book build."""
    return os.environ.get(BOOK_BUILD_ENV) == "1"


def setup() -> None:
    """Call once at the top of a notebook: `from hdr_lib.book import render; render.setup()`.

    In JupyterLab (and VS Code, papermill, nbval) a figure is the plotly mime type, which JupyterLab's
    bundled plotly extension draws interactively, offline. In the book build a figure is a `text/html`
    div plus one `Plotly.newPlot` call on the plotly.js that the book loads once from its own `_static`:
    hover and zoom work in the static pages, with no network and no copy of plotly.js per figure. A
    widget needs a live kernel, so in the book it shows a note instead of an empty box.
    """
    import plotly.io as pio

    pio.renderers[RENDERER] = BookRenderer() if in_book_build() else LabRenderer()
    pio.renderers.default = RENDERER
    if in_book_build():
        _show_widgets_as_notes()


class LabRenderer(MimetypeRenderer):
    """The plotly mime type (drawn by JupyterLab's plotly extension) plus a one-line text fallback."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        import plotly.io as pio

        fig = json.loads(pio.to_json({**fig_dict, "config": PLOTLY_CONFIG}, validate=False, remove_uids=False))
        return {"application/vnd.plotly.v1+json": fig, "text/plain": _describe(fig_dict)}


_FIGURE_COUNT = itertools.count(1)


class BookRenderer(MimetypeRenderer):
    """A div and a script that draws it with the page's global plotly.js (loaded once by the book)."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        return {"text/html": self.to_html(fig_dict), "text/plain": _describe(fig_dict)}

    def to_html(self, fig_dict: dict) -> str:
        import plotly.io as pio

        payload = pio.to_json(fig_dict, validate=False, remove_uids=True)
        # Ids from the figure's place in the notebook and its content: the same build gives the same page, and
        # one figure shown twice on a page still gets two ids. (plotly copies renderers, so the count is global.)
        div_id = f"hdr-fig-{next(_FIGURE_COUNT)}-{hashlib.sha1(payload.encode()).hexdigest()[:10]}"
        height = (fig_dict.get("layout") or {}).get("height") or 450
        # "</" would end the script element early inside a page; JSON allows the escaped form.
        payload = payload.replace("</", "<\\/")
        config = json.dumps(BOOK_PLOTLY_CONFIG)
        return (
            f'<div id="{div_id}" class="plotly-graph-div hdr-figure" style="height:{int(height)}px; width:100%;"></div>\n'
            '<script type="text/javascript">\n'
            "(function () {\n"
            f"  var fig = {payload};\n"
            # Drawn at the div's width when the page is laid out, and again whenever that width changes (a phone,
            # the sidebar toggled): plotly's own "responsive" follows window resizes only.
            f'  function draw() {{ var div = document.getElementById("{div_id}");\n'
            f'    Plotly.newPlot(div, fig.data, fig.layout, {config});\n'
            '    if (window.ResizeObserver) { new ResizeObserver(function () { Plotly.Plots.resize(div); }).observe(div); } }\n'
            # plotly.js is a plain <script> in the page head, so it is there already; wait for it otherwise.
            '  if (window.Plotly) { draw(); } else { window.addEventListener("load", draw); }\n'
            "})();\n"
            "</script>"
        )


def _describe(fig_dict: dict) -> str:
    title = ((fig_dict.get("layout") or {}).get("title") or {})
    text = title.get("text") if isinstance(title, dict) else title
    return f"<plotly figure{': ' + text if text else ''}>"


WIDGET_NOTE = (
    '<div class="admonition note hdr-widget-note"><p class="admonition-title">Interactive control</p>'
    "<p>This control needs a live Python kernel: open the chapter in JupyterLab to use it. {detail}</p></div>"
)


def _show_widgets_as_notes() -> None:
    """Book build only: give every ipywidget a text/html note, which the book shows instead of the widget.

    Uses IPython's per-type display formatters (its public API); outside IPython there is nothing to do.
    """
    try:
        from IPython import get_ipython
        import ipywidgets
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type(ipywidgets.Widget, lambda widget: WIDGET_NOTE.format(detail=""))
