"""The page "On your machine" (book/_static/hdr_browser.js with the assets hdr_lib.book.browser_export writes) in
Debian's headless Chromium, served from 127.0.0.1 and opened from disk (file://), with every other host unreachable:
20 steps of TensorFlow.js on the `cpu` backend and on `webgl` (Chromium's software GL, SwiftShader) give the
PyTorch reference path's first 20 losses from the same seed and batch order, and the record the page returns reads
in `python -m hdr_lib scorecard`, which fills none of its cells from it.

Tolerance: float32 on both sides, different kernels (summation orders). Measured on this project's 2-core AMD EPYC
with Debian's Chromium 156 and tfjs 4.22, seed 0, served and from disk alike: the largest difference over the 20
losses was 2.4e-7 on `cpu` and 4.8e-7 on `webgl` (SwiftShader); LOSS_TOL is 1e-5, about 20 times the larger, and
far below the loss's change from one step to the next (about 1e-2), so a wrong batch, layout or update fails it.

The page's assets are written into a temporary folder (as the book build writes them into _static), beside a page
holding the book page's container; the built book's own page is checked by test_book_browser (loads offline,
no script error). Needs `npm ci` (node_modules) and Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = 20
SEED = 0
LOSS_TOL = 1e-5
RUN_TIMEOUT_S = 600  # 20 CPU-backend steps (~0.5 s each) and 10,000 test images on a loaded 2-core machine

pytestmark = pytest.mark.slow

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>On your machine</title></head><body>
<div id="hdr-browser"></div><script src="../_static/hdr_browser.js"></script></body></html>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    from hdr_lib.book.browser_export import write_assets

    folder = tmp_path_factory.mktemp("site")
    write_assets(folder / "_static", seeds=[SEED])
    (folder / "book").mkdir()
    (folder / "book" / "on_your_machine.html").write_text(PAGE)
    return folder


@pytest.fixture(scope="module")
def reference_losses(data_root) -> list[float]:
    """The reference path's first STEPS losses: hdr_lib's own start (init_model), batch order (batch_order(seed, 1))
    and plain PyTorch loop (ReferenceStep), through hdr_lib.train.train."""
    from hdr_lib.config import TrainConfig
    from hdr_lib.train import train

    config = TrainConfig(seed=SEED, device="cpu", path="reference", epochs=1)
    record = train(config, data_root=data_root, max_steps=STEPS, keep_step_losses=True, progress=False)
    assert len(record["step_losses"]) == STEPS
    return record["step_losses"]


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def driver():
    from scripts import chromium

    # Not chromium.FLAGS: WebGL needs the GPU process, here Chromium's software GL (SwiftShader).
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
             "--use-angle=swiftshader", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--window-size=1400,1000",
             # no network but this machine: every host name fails to resolve; 127.0.0.1 is an address
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    try:
        browser = chromium.selenium_driver(flags)
    except chromium.Missing as exc:
        pytest.fail(str(exc))  # never a skip: only CUDA-only tests skip
    browser.set_script_timeout(RUN_TIMEOUT_S)
    browser.set_page_load_timeout(120)
    yield browser
    browser.quit()


RUN = """const done = arguments[arguments.length - 1];
window.hdrBrowser.run({backend: arguments[0], steps: arguments[1], seed: arguments[2]})
  .then(r => done({record: r}), e => done({error: String(e && e.stack || e)}));"""

ORIGINS = """return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);"""


def _run(driver, url: str, backend: str) -> dict:
    driver.get(url)
    assert driver.execute_script("return typeof window.hdrBrowser") == "object"
    result = driver.execute_async_script(RUN, backend, STEPS, SEED)
    assert "error" not in result, result.get("error")
    loaded = driver.execute_script(ORIGINS)
    prefix = url.rsplit("/book/", 1)[0]
    assert loaded and all(u.startswith(prefix) for u in loaded), [u for u in loaded if not u.startswith(prefix)]
    return result["record"]


def _check_record(record: dict, backend: str, reference: list[float], tmp_path: Path) -> None:
    losses = record["step_losses"]
    assert len(losses) == STEPS
    worst = max(abs(a - b) for a, b in zip(losses, reference))
    print(f"{backend} {record['environment']['page']}: largest |loss - reference| over {STEPS} steps {worst:.3g}")
    assert worst < LOSS_TOL, f"{backend}: largest loss difference {worst:.3g} over {STEPS} steps (tolerance {LOSS_TOL})"
    assert record["schema"] == "hdr-run/2" and record["status"] == "incomplete"
    assert record["config"]["framework"] == f"tfjs-{backend}" and record["config"]["path"] == "tfjs"
    assert record["config"]["seed"] == SEED and record["config"]["batch_size"] == 64
    env = record["environment"]
    assert env["session"] and "Chrome" in env["browser"] and env["hardware_concurrency"] >= 1
    assert env["tfjs"]["@tensorflow/tfjs"] == "4.22.0" and env["tfjs_backend"] == backend
    assert 9 < record["test_accuracy"] <= 100 and record["total_train_seconds"] > 0
    assert record["execution"]["seconds_per_step"] > 0
    from hdr_lib.book.provenance import provenance_rows

    row = provenance_rows([record])[0]  # the Machines page's row: the browser and the GPU it reported
    assert env["browser"] in row[10] and str(env["gpu_renderer"] or "not given") in row[11] and "4.22.0" in row[14]
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / f"browser-{backend}.json").write_text(json.dumps(record))
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "hdr_lib", "scorecard", "--results", str(folder), "--json"],
                         capture_output=True, text=True, env=env_vars, timeout=300)
    assert out.returncode == 0, out.stderr
    claims = json.loads(out.stdout)["claims"]
    filled = [(c["key"], path) for c in claims for path, cell in c["paths"].items() if cell["measured"] is not None]
    assert not filled, f"the scorecard filled {filled} from a browser record"


@pytest.mark.parametrize("backend", ["cpu", "webgl"])
def test_served_from_localhost_matches_the_reference_path(driver, server, reference_losses, backend, tmp_path):
    record = _run(driver, f"{server}/book/on_your_machine.html", backend)
    assert record["environment"]["page"] == "http"
    _check_record(record, backend, reference_losses, tmp_path)


@pytest.mark.parametrize("backend", ["cpu", "webgl"])
def test_opened_from_disk_matches_the_reference_path(driver, site, reference_losses, backend, tmp_path):
    record = _run(driver, (site / "book" / "on_your_machine.html").as_uri(), backend)
    assert record["environment"]["page"] == "file"
    _check_record(record, backend, reference_losses, tmp_path)


def test_a_bad_backend_or_step_count_is_refused_before_any_work(driver, server):
    driver.get(f"{server}/book/on_your_machine.html")
    for options, word in ((["wasm", 20, 0]), "backend"), ((["cpu", 939, 0]), "steps"), ((["cpu", 5, 9]), "seed"):
        result = driver.execute_async_script(RUN, *options)
        assert word in result.get("error", ""), result
    assert driver.execute_script("return typeof window.tf") == "undefined"  # nothing was loaded for them
