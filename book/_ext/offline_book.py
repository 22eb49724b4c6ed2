"""Sphinx extension for this book: the pages work offline, and the kernels know they run for the book.

- plotly.js is copied from the installed plotly package (so it always matches the figures' JSON) into a
  static folder of the build; `_config.yml` loads it once per page (`html_js_files: [plotly.min.js]`).
- The book's own stylesheet (book/_static/hdr.css: wide tables scroll instead of being cut off).
- Each script goes into a page once: this Sphinx and jupyter-book add some inline scripts twice, and
  sphinx-thebe's `const THEBE_JS_URL` declared twice is a SyntaxError in the browser. Thebe itself is off
  (it would load from a CDN), so its configuration and loader are left out of the pages.
- Every run record (results/**/*.json) is copied into the site as records/... (not results/: Sphinx skips extra
  files that match exclude_patterns, which names results), so the Reproduce page links each one for download.
- The page "On your machine" (book/on_your_machine.md) gets its TensorFlow.js (from node_modules: `npm ci`), MNIST
  as gzipped IDX and each seed's initial weights and batch order, all written into the same static folder by
  hdr_lib.book.browser_export: the page loads nothing from the network.
- The kernels that execute the notebooks inherit HDR_BOOK_BUILD=1 (hdr_lib.book.render then emits a div and a
  Plotly.newPlot call instead of the plotly mime type the book cannot show) and HDR_PROGRESS=0 (no
  progress-bar widgets in static pages), and find hdr_lib through PYTHONPATH wherever the notebook lies.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _kernel_environment() -> None:
    os.environ["HDR_BOOK_BUILD"] = "1"
    os.environ["HDR_PROGRESS"] = "0"
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def _vendor_plotly(app) -> None:
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not source.is_file():
        raise RuntimeError(f"{source} is missing: reinstall plotly (pip install -r requirements.txt)")
    folder = Path(app.doctreedir).parent / "offline-static"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "plotly.min.js")
    app.config.html_static_path.append(str(folder))
    app.config.html_static_path.append(str(ROOT / "book" / "_static"))  # hdr.css: the book's own styles


def _browser_assets(app) -> None:
    """TF.js, MNIST and the seeds' starts for the page "On your machine", into the static folder _vendor_plotly made."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from hdr_lib.book.browser_export import write_assets

    write_assets(Path(app.doctreedir).parent / "offline-static")


def _copy_records(app) -> None:
    """results/**/*.json into <site>/records/ (through html_extra_path): every record downloadable from the book."""
    if str(ROOT) not in sys.path:  # this checkout's hdr_lib, as the notebooks' kernels get it
        sys.path.insert(0, str(ROOT))
    from hdr_lib.measure.queries import results_folder

    source = results_folder()  # the folder the pages read their records from
    extra = Path(app.doctreedir).parent / "offline-extra"
    target = extra / "records"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if source.is_dir():
        for path in sorted(source.rglob("*.json")):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
    app.config.html_extra_path.append(str(extra))


def _one_copy_of_each_script(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    kept = []
    for script in scripts:
        body = getattr(script, "attributes", {}).get("body", "")
        if "THEBE_JS_URL" in body or str(getattr(script, "filename", "")).endswith("sphinx-thebe.js"):
            continue
        if script not in kept:
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    _kernel_environment()  # before any notebook runs: execution happens while Sphinx reads the sources
    app.connect("builder-inited", _vendor_plotly)
    app.connect("builder-inited", _browser_assets)  # after _vendor_plotly: same folder
    app.connect("builder-inited", _copy_records)
    app.add_css_file("hdr.css")
    app.connect("html-page-context", _one_copy_of_each_script, priority=900)  # after the themes' handlers
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
