"""The figures read in both of the page's themes: book/_static/hdr-theme.js relays out every plotly figure when
pydata-sphinx-theme's <html data-theme> turns dark, and back when it turns light. Checked in Debian's chromium on
the colours the browser draws (tick labels, background), on a page of the library's own figures and on a built
chapter. Needs chromium (scripts/install_browser.sh; the conftest's headless_chromium); the built-chapter test a built
book, as test_book_browser."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import plotly

from tests import test_book_browser as tb

ROOT = Path(__file__).resolve().parent.parent
THEME_JS = ROOT / "book" / "_static" / "hdr-theme.js"

# What the browser drew: the first figure's tick-label fill, its paper background fill, and whether all are drawn.
DRAWN = """(() => {
  const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  const lum = c => { const m = (c || '').match(/[\\d.]+/g); if (!m) return null;
    const [r, g, b] = m.slice(0, 3).map(Number); return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; };
  const alpha = c => { const m = (c || '').match(/[\\d.]+/g); return m && m.length > 3 ? Number(m[3]) : 1; };
  return {figures: divs.length, drawn: divs.filter(d => d.querySelector('.main-svg')).length,
    themed: divs.filter(d => d.getAttribute('data-hdr-theme') === document.documentElement.getAttribute('data-theme')).length,
    ticks: divs.map(d => d.querySelector('.xtick text, .ytick text')).filter(t => t)  // image grids have none
               .map(t => lum(getComputedStyle(t).fill)),
    bg_alpha: divs.map(d => alpha(getComputedStyle(d.querySelector('svg.main-svg')).backgroundColor)),
    ready: document.readyState};
})()"""


def _wait(tools, predicate, seconds=tb.DRAW_TIMEOUT_S + 60) -> dict:
    deadline, state = time.monotonic() + seconds, {}
    while time.monotonic() < deadline:
        tools.pump(0.3)
        state = tools.evaluate(DRAWN) or {}
        if predicate(state):
            return state
    return state


def _both_themes(browser, url: str) -> dict:
    """The drawn colours of the page at `url` in light, then dark, then light again."""
    out = {}
    with browser.tab(tb.PAGE_TIMEOUT_S) as tools:
        for domain in ("Runtime", "Page"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=url)
        for step, theme in enumerate(("light", "dark", "light")):
            tools.evaluate(f"document.documentElement.setAttribute('data-theme', '{theme}')")
            state = _wait(tools, lambda s: s.get("ready") == "complete" and s.get("figures", 0) > 0
                          and s["drawn"] == s["figures"] == s["themed"] and len(s["ticks"]) > 0)
            out[f"{step}-{theme}"] = state
        errors = [e for e in tools.events if e.get("method") == "Runtime.exceptionThrown"]
        out["errors"] = [e["params"]["exceptionDetails"].get("exception", {}).get("description") for e in errors]
        return out


def _assert_readable(seen: dict) -> None:
    assert seen["errors"] == [], seen["errors"]
    for key, state in seen.items():
        if key == "errors":
            continue
        assert state.get("figures", 0) > 0 and state["drawn"] == state["figures"] == state["themed"], (key, state)
        assert state["ticks"], f"no figure with tick labels drew: {state}"
        if key.endswith("dark"):
            assert all(t > 0.6 for t in state["ticks"]), f"dark page, dark tick labels: {state['ticks']}"
            assert all(a == 0 for a in state["bg_alpha"]), f"dark page, opaque figure background: {state['bg_alpha']}"
        else:
            assert all(t < 0.45 for t in state["ticks"]), f"light page, light tick labels: {state['ticks']}"


def test_library_figures_follow_the_theme(headless_chromium, tmp_path):
    # The library's figures as the book draws them (render.BookRenderer), on a page with the book's two scripts.
    from hdr_lib.book import figures
    from hdr_lib.book.render import BookRenderer

    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", tmp_path / "plotly.min.js")
    shutil.copyfile(THEME_JS, tmp_path / "hdr-theme.js")
    figs = [figures.lr_schedule(list(range(1, 21)), [0.01] * 10 + [0.001] * 10),
            figures.memory_bars({"weights": 177_000, "activations": 1_200_000, "reported": None})]
    body = "\n".join(BookRenderer().to_html(json.loads(f.to_json())) for f in figs)
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html><html data-theme="light"><head><script src="plotly.min.js"></script>'
                    f'<script src="hdr-theme.js"></script></head><body>{body}</body></html>')
    _assert_readable(_both_themes(headless_chromium, page.as_uri()))


def test_a_built_chapter_follows_the_theme(headless_chromium):
    pages = tb._pages()  # skips without a built book (fails with CI set), as the other browser tests
    page = next(p for p in pages if p.name == "02_dataset.html")
    assert (tb.HTML_DIR / "_static" / "hdr-theme.js").is_file(), "hdr-theme.js is not in the built site"
    _assert_readable(_both_themes(headless_chromium, page.as_uri()))
