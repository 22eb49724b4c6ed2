"""Print the built book (_build/html) into one PDF: a title page, a table of contents, then every page of _toc.yml
in its order, each printed by headless chromium (scripts/chromium.py) once its plotly figures have drawn,
joined by pypdf with an outline (the PDF's bookmarks). No notebook runs again: the pages are the ones
scripts/build_book.sh built.

    python scripts/print_book.py [--html _build/html] [--out _build/pdf/book.pdf]

What a printed page leaves out: the site's navigation, the figures' toolbars and the notes that stand in for live
widgets (a widget needs a running kernel; on paper there is nothing to press). Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
import tempfile
import time
from pathlib import Path

import chromium  # scripts/chromium.py, beside this script (the folder Python puts first on the path)

from hdr_lib import settings
from hdr_lib.measure.machine import git_commit

ROOT = Path(__file__).resolve().parent.parent
PAGE_TIMEOUT_S = 300  # one page to load and draw its figures (plotly.js is 4.8 MB to parse on a busy machine)
WIDTH_PX = 717  # A4's width less two 0.4 in margins, at 96 px per inch: figures are drawn at the printed width
PRINT = dict(printBackground=True, paperWidth=8.27, paperHeight=11.69, marginTop=0.5, marginBottom=0.6,
             marginLeft=0.4, marginRight=0.4, displayHeaderFooter=True, headerTemplate="<span></span>")

# What a printed page does not show (pydata-sphinx-theme's navigation, plotly's toolbar, the live widgets' notes).
HIDE = """.bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .header-article, .prev-next-area, .bd-footer,
.bd-footer-content, footer, .modebar-container, .hdr-widget-note, .headerlink, .skip-link, #pst-back-to-top
{ display: none !important; }
.bd-main, .bd-content, .bd-article-container, .bd-page-width { max-width: none !important; width: 100% !important;
  padding: 0 !important; margin: 0 !important; }
.plotly-graph-div, figure, table, pre { break-inside: avoid; }
pre { white-space: pre-wrap !important; overflow-wrap: anywhere; }  /* no scroll bar on paper: long lines wrap */"""

READY = """(() => {
  const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  return {ready: document.readyState, figures: divs.length,
          drawn: divs.filter(d => d.querySelector('.main-svg')).length,
          title: (document.querySelector('main h1') || document.querySelector('h1') || {innerText: document.title})
                 .innerText.replace(/#$/, '').trim()};
})()"""

PREPARE = """(() => {
  document.documentElement.setAttribute('data-theme', 'light');
  const style = document.createElement('style');
  style.textContent = %s;
  document.head.appendChild(style);
  document.querySelectorAll('details').forEach(d => d.open = true);
  if (window.Plotly) document.querySelectorAll('.plotly-graph-div').forEach(d => Plotly.Plots.resize(d));
  return true;
})()""" % json.dumps(HIDE)


class Fail(Exception):
    """One line for the user, exit 2."""


def print_page(browser: chromium.Browser, url: str) -> tuple[str, bytes]:
    """(the page's title, its PDF) once every plotly figure on it has drawn."""
    with browser.tab(PAGE_TIMEOUT_S) as page:
        page.call("Emulation.setDeviceMetricsOverride", width=WIDTH_PX, height=1000, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        deadline, state = time.monotonic() + PAGE_TIMEOUT_S, {}
        while time.monotonic() < deadline:
            time.sleep(0.3)
            state = page.evaluate(READY) or {}
            if state.get("ready") == "complete" and state.get("drawn") == state.get("figures"):
                break
        else:
            raise Fail(f"{url}: {state.get('drawn')} of {state.get('figures')} figures drew in "
                       f"{PAGE_TIMEOUT_S} s; the PDF would show empty boxes")
        page.evaluate(PREPARE)
        time.sleep(0.5)  # the resize's redraw
        title = state.get("title") or url
        footer = (f'<div style="font-size:8px;width:100%;padding:0 0.4in;display:flex;justify-content:space-between;'
                  f'color:#555"><span>{html.escape(title)}</span><span class="pageNumber"></span></div>')
        data = page.call("Page.printToPDF", **PRINT, footerTemplate=footer)["data"]
        return title, base64.b64decode(data)


def toc_pages(html_dir: Path) -> list[tuple[str | None, Path]]:
    """(part caption or None, built page) for the root and every chapter of _toc.yml, in order."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [(None, toc["root"])]
    for part in toc.get("parts", []):
        entries += [(part.get("caption"), chapter["file"]) for chapter in part.get("chapters", [])]
    pages = [(caption, html_dir / f"{Path(name).with_suffix('')}.html") for caption, name in entries]
    missing = [str(p) for _, p in pages if not p.is_file()]
    if missing:
        raise Fail(f"the built book lacks {missing[0]} (and {len(missing) - 1} more): run scripts/build_book.sh first")
    return pages


def front_matter(titles: list[tuple[str | None, str, int]]) -> str:
    """The title page and the table of contents, as HTML: (part, title, first page in the PDF) per chapter."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    rows, part = [], object()
    for caption, title, first in titles:
        if caption != part and caption is not None:
            rows.append(f'<tr><td colspan="2" class="part">{html.escape(caption)}</td></tr>')
        part = caption
        rows.append(f"<tr><td>{html.escape(title)}</td><td class='n'>{first}</td></tr>")
    commit = git_commit(ROOT) or ""  # git's answer, else HDR_GIT_COMMIT (checked), as every record names it
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body {{ font-family: sans-serif; margin: 0; }} .title {{ height: 9.5in; display: flex; flex-direction: column;
justify-content: center; page-break-after: always; }} h1 {{ font-size: 30px; }} table {{ width: 100%;
border-collapse: collapse; }} td {{ padding: 4px 0; border-bottom: 1px dotted #bbb; }} td.n {{ text-align: right; }}
td.part {{ font-weight: bold; padding-top: 14px; border: none; }}</style></head><body>
<div class="title"><h1>{html.escape(config.get("title", "The book"))}</h1>
<p>{html.escape(config.get("author", ""))}, {html.escape(str(config.get("copyright", "")))}</p>
<p>Printed from the built HTML pages{f", commit {html.escape(commit[:12])}" if commit else ""}. Code under MIT,
text and figures under CC BY 4.0, MNIST under its own terms (README). The interactive figures and the live
controls are in the HTML book; here each figure is drawn as it first appears.</p></div>
<h2>Contents</h2><table>{"".join(rows)}</table></body></html>"""


def build(html_dir: Path, out: Path) -> int:
    from pypdf import PdfReader, PdfWriter
    import io

    if not (html_dir / "index.html").is_file():
        raise Fail(f"no built book at {html_dir}: run scripts/build_book.sh first")
    try:
        binary = chromium.find("chromium")
    except chromium.Missing as exc:
        raise Fail(str(exc)) from None
    pages = toc_pages(html_dir)
    try:
        browser = chromium.Browser(binary)
    except chromium.NotStarted:
        raise Fail("chromium did not start (scripts/install_browser.sh installs Debian's chromium)") from None
    try:
        printed = []
        for caption, page in pages:
            title, data = print_page(browser, page.as_uri())
            printed.append((caption, title, PdfReader(io.BytesIO(data))))
            print(f"printed {page.relative_to(html_dir)}: {len(printed[-1][2].pages)} pages", flush=True)
        front_pages, front = 2, None
        for _ in range(3):  # the contents' own length moves every chapter's first page: settle it
            first, titles = front_pages + 1, []
            for caption, title, reader in printed:
                titles.append((caption, title, first))
                first += len(reader.pages)
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "front.html").write_text(front_matter(titles))
                front = PdfReader(io.BytesIO(print_page(browser, (Path(folder) / "front.html").as_uri())[1]))
            if len(front.pages) == front_pages:
                break
            front_pages = len(front.pages)
    finally:
        browser.close()
    writer = PdfWriter()
    writer.append(front)
    parents = {}
    for (caption, title, reader), (_, _, first) in zip(printed, titles):
        start = len(writer.pages)
        writer.append(reader)
        parent = None
        if caption is not None:
            if caption not in parents:
                parents[caption] = writer.add_outline_item(title=caption, page_number=start)
            parent = parents[caption]
        writer.add_outline_item(title=title, page_number=start, parent=parent)
    writer.add_metadata({"/Title": _title(), "/Creator": "scripts/print_book.py"})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        writer.write(f)
    print(f"{out}: {len(writer.pages)} pages, {len(printed)} chapters")
    return 0


def _title() -> str:
    import yaml

    return str(yaml.safe_load((ROOT / "_config.yml").read_text()).get("title", "The book"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default=str(ROOT / "_build" / "html"), help="the built book (default %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "_build" / "pdf" / "book.pdf"), help="default %(default)s")
    args = parser.parse_args(argv)
    try:
        settings.check_environment()  # HDR_CHROMIUM and HDR_GIT_COMMIT are read later: checked before any work
        return build(Path(args.html).resolve(), Path(args.out))
    except (Fail, settings.SettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
