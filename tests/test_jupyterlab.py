"""The chapters in a real JupyterLab, driven by Chromium: a plotly figure keeps a visible height when a reader
clicks a legend entry or steps a slider (with plotly's "responsive" config it collapsed to 0 px), and chapter 06's
live experiment trains from its controls and reports the result.

JupyterLab (requirements.txt) runs headless on a free local port with a token, in a temporary folder holding
copies of chapters 02, 05 and 06, so nothing is written into notebooks/. The copies' parameters cell is made
short (one epoch at batch size 512, a few profiled steps, a temporary cache for the live run that chapters 05
and 06 share); their kernels import this checkout's hdr_lib (PYTHONPATH). Chromium is Debian's `chromium`,
driven by selenium through Debian's `chromium-driver` (scripts/install_browser.sh; scripts/chromium.py starts
it): Selenium Manager cannot download a driver here. Locally a missing browser, driver or selenium skips with the
reason; with CI set, the tests fail instead (conftest.missing).

HDR_SCREENSHOT_DIR=folder saves a screenshot of the page and of each figure tested, before and after the click.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from conftest import missing

from scripts import chromium

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = (*chromium.FLAGS, "--window-size=1400,1000")
# What each copy runs with: short, and nothing written outside the temporary folder.
SHORT = {"epochs": 1, "batch_size": 512}
CHAPTER_PARAMETERS = {"05_training_time": {"profile_steps": 5}}
START_TIMEOUT_S = 120   # JupyterLab to answer, a notebook to open with its kernel idle
RUN_TIMEOUT_S = 900     # one chapter's Run All (chapter 05 trains an epoch; a loaded machine is slow)
LIVE_TIMEOUT_S = 600    # chapter 06's live experiment: one epoch from the widget
REDRAW_S = 1.5          # after a click: plotly waits out a double click (300 ms) and redraws
MIN_HEIGHT_PX = 100
SCREENSHOTS = os.environ.get("HDR_SCREENSHOT_DIR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _short_copy(name: str, folder: Path, cache_dir: Path) -> None:
    """notebooks/<name>.ipynb without outputs, its parameters cell ending with the short values."""
    notebook = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    values = {**SHORT, **CHAPTER_PARAMETERS.get(name, {}), "cache_dir": str(cache_dir)}
    tagged = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"]).rstrip("\n")
    tagged[0]["source"] = source + "\n# short run for tests/test_jupyterlab.py\n" + "".join(
        f"{key} = {value!r}\n" for key, value in values.items())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (folder / f"{name}.ipynb").write_text(json.dumps(notebook, indent=1))


def _settings(folder: Path) -> None:
    """User settings of this JupyterLab only: every cell rendered (no windowing, so an off-screen figure has its
    real size), no news or update checks (no network here)."""
    for plugin, values in {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                           "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                            "checkForUpdates": False}}.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


class Lab:
    def __init__(self, base: str, token: str, driver, work: Path):
        self.base, self.token, self.driver, self.work = base, token, driver, work

    def api(self, method: str, path: str):
        request = Request(f"{self.base}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        with urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, what: str, check, timeout: float, every: float = 0.5):
        """Poll check() until it returns something true. An element that the page re-rendered between finding it and
        reading it (a widget's output replaced while a run reports) is a reason to look again, not a failure."""
        from selenium.common.exceptions import StaleElementReferenceException

        deadline = time.monotonic() + timeout
        while True:
            try:
                value = check()
            except StaleElementReferenceException:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                self.shot(f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:40]}")
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def shot(self, name: str, element=None) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            path = str(Path(SCREENSHOTS) / f"{name}.png")
            try:
                element.screenshot(path)
            except Exception:  # no element, or one of 0 px (what the tests look for): the whole page
                self.driver.save_screenshot(path)

    def open_and_run_all(self, name: str) -> None:
        """Open the chapter's copy in a fresh workspace, wait for its kernel, Run All, wait for every cell."""
        for session in self.api("GET", "/api/sessions"):  # the previous chapter's kernel: memory back
            self.api("DELETE", f"/api/sessions/{session['id']}")
        self.driver.get(f"{self.base}/lab/workspaces/{name.replace('_', '-')}/tree/{name}.ipynb?token={self.token}")
        self.wait(f"{name} to open with an idle kernel", lambda: self.js(NOTEBOOK_READY), START_TIMEOUT_S)
        self.js("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        def finished():
            state = self.js(RUN_STATE)
            if state["errors"]:
                self.shot(f"{name}-error")
                pytest.fail(f"{name}: a cell raised in JupyterLab:\n" + "\n".join(state["errors"]))
            return state["done"] == state["cells"] and state["kernel"] == "idle"

        self.wait(f"{name}: Run All to finish", finished, RUN_TIMEOUT_S)
        self.shot(f"{name}-after-run-all")

    def figure(self, kind: str):
        """The figure `kind` (see FIND_FIGURE), scrolled to the middle of the view; fails if it is not there."""
        assert self.js(FIND_FIGURE, kind), f"not exactly one {kind!r} figure in the page"
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, f'[data-hdr-test="{kind}"]')

    def heights(self, kind: str) -> dict:
        assert self.js(FIND_FIGURE, kind), f"not exactly one {kind!r} figure in the page"
        return self.js(HEIGHTS, kind)


NOTEBOOK_READY = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.sessionContext || !panel.context || !panel.context.isReady) return false;
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
"""

RUN_STATE = """
const panel = window.jupyterapp.shell.currentWidget;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
let done = 0;
for (const cell of cells) {
  const prompt = cell.node.querySelector('.jp-InputPrompt');
  if (cell.model.executionCount !== null && !(prompt && prompt.textContent.includes('*'))) done++;
  for (let i = 0; i < cell.model.outputs.length; i++) {
    const out = cell.model.outputs.get(i).toJSON();
    if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
  }
}
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return {cells: cells.length, done: done, errors: errors, kernel: kernel ? kernel.status : 'none'};
"""

# Marks the figure of a kind with data-hdr-test=<kind> (plotly redraws into the same div; the mark is set again
# on every look, in case the output was replaced) and scrolls it to the middle of the view.
FIND_FIGURE = """
const kind = arguments[0];
// the figure's own layout (plotly's full layout gives an untitled figure a placeholder title)
const title = d => (d.layout && d.layout.title && (d.layout.title.text || d.layout.title)) || '';
const notes = d => ((d.layout && d.layout.annotations) || []).map(a => a.text || '').join('|');
const tests = {
  'class-balance': d => title(d).startsWith('Class balance'),
  'epoch-curves': d => title(d).startsWith('Per-epoch curves'),
  'misclassified': d => notes(d).includes('digit (hover') && (d.layout.sliders || []).length > 0,
  'live': d => notes(d).includes('training loss') && !title(d),
};
const figures = Array.from(document.querySelectorAll('.js-plotly-plot')).filter(tests[kind]);
if (figures.length !== 1) return false;
document.querySelectorAll(`[data-hdr-test="${kind}"]`).forEach(d => d.removeAttribute('data-hdr-test'));
figures[0].setAttribute('data-hdr-test', kind);
figures[0].scrollIntoView({block: 'center'});
return true;
"""

# The heights a reader sees: the figure's div, the SVG plotly draws into it, and the output area that holds it.
HEIGHTS = """
const d = document.querySelector(`[data-hdr-test="${arguments[0]}"]`);
const h = e => e ? e.getBoundingClientRect().height : 0;
const svg = d.querySelector('.main-svg');
return {div: h(d), svg: h(svg), output: h(d.closest('.jp-OutputArea-output')),
        traces: d.data.length, points: d.data.map(t => (t.x || []).length),
        visible: d.data.map(t => t.visible === undefined ? true : t.visible),
        slider: ((d._fullLayout.sliders || [])[0] || {}).active, title: d._fullLayout.title.text};
"""


def _visible(heights: dict) -> float:
    return min(heights["div"], heights["svg"], heights["output"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory, data_root):
    # The browser first: without it (or its driver, or selenium) nothing else starts.
    profile = tempfile.mkdtemp(prefix="hdr-chromium-")
    try:
        driver = chromium.selenium_driver((*CHROMIUM_FLAGS, f"--user-data-dir={profile}"))
    except chromium.Missing as exc:
        shutil.rmtree(profile, ignore_errors=True)
        missing(str(exc))
    try:
        driver.set_script_timeout(60)
        yield from _lab_for(driver, tmp_path_factory.mktemp("jupyterlab"), data_root)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _lab_for(driver, work: Path, data_root: Path):
    """JupyterLab on copies of chapters 02, 05 and 06 in `work`, with `driver` as its reader; stopped after."""
    for name in ("02_dataset", "05_training_time", "06_accuracy"):
        _short_copy(name, work, work / "run-cache")
    _settings(work / ".lab-settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ,
           # the kernels import this checkout's hdr_lib, ahead of any installed copy
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HDR_DATA_DIR": str(data_root),
           "JUPYTER_CONFIG_DIR": str(work / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(work / ".runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(work / ".lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(work / ".lab-workspaces"), "IPYTHONDIR": str(work / ".ipython")}
    for name in ("HDR_PROGRESS", "HDR_BOOK_BUILD"):  # a live kernel, as a reader's
        env.pop(name, None)
    log = open(work / "jupyterlab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False",
         "--LabApp.expose_app_in_browser=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urlopen(f"{base}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (work / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield Lab(base, token, driver, work)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _click(lab: Lab, element, dx: float = 0.0) -> None:
    """A real mouse click `dx` px right of the element's centre."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(lab.driver).move_to_element_with_offset(element, int(dx), 0).click().perform()
    time.sleep(REDRAW_S)


def _rail(lab: Lab, kind: str):
    from selenium.webdriver.common.by import By

    return lab.figure(kind).find_element(By.CSS_SELECTOR, ".slider-container .slider-rail-touch-rect")


def test_chapter02_legend_click_keeps_the_figure_visible(lab):
    lab.open_and_run_all("02_dataset")
    from selenium.webdriver.common.by import By

    before = lab.heights("class-balance")
    assert _visible(before) > MIN_HEIGHT_PX, f"'Class balance' drawn without height: {before}"
    lab.shot("02-class-balance-before", lab.figure("class-balance"))
    toggle = lab.figure("class-balance").find_elements(By.CSS_SELECTOR, ".legend .traces .legendtoggle")[0]
    _click(lab, toggle)
    after = lab.heights("class-balance")
    lab.shot("02-class-balance-after-legend-click", lab.figure("class-balance"))
    assert after["visible"][0] == "legendonly", f"the legend click did not hide the first trace: {after}"
    assert _visible(after) > MIN_HEIGHT_PX, f"'Class balance' collapsed after a legend click: {before} -> {after}"


def test_chapter05_slider_step_keeps_the_figure_visible_and_training_shows_progress(lab):
    lab.open_and_run_all("05_training_time")
    # the live run's cell: the per-epoch line, and tqdm's bar as a widget (the per-batch bar of each epoch closes
    # when the epoch ends; the run's bar over the epochs stays)
    outputs = lab.js("""
      const panel = window.jupyterapp.shell.currentWidget;
      const cell = panel.content.widgets.find(c => c.model.sharedModel.getSource().includes('nb.cached_run('));
      return {text: cell.node.querySelector('.jp-OutputArea').innerText,
              bars: Array.from(cell.node.querySelectorAll('.widget-hprogress, .widget-progress')).length};""")
    assert re.search(r"epoch +1/1: loss [\d.]+, test accuracy [\d.]+ %", outputs["text"]), outputs["text"]
    assert outputs["bars"] >= 1 and re.search(r"train\s+\w+/fast:\s+100%", outputs["text"]), \
        f"no tqdm progress bar in the live run's output: {outputs}"

    before = lab.heights("epoch-curves")
    assert _visible(before) > MIN_HEIGHT_PX, f"'Per-epoch curves' drawn without height: {before}"
    lab.shot("05-epoch-curves-before", lab.figure("epoch-curves"))
    rail = _rail(lab, "epoch-curves")
    _click(lab, rail, dx=-rail.rect["width"] / 2 + 3)  # the slider's first step: epoch 1
    after = lab.heights("epoch-curves")
    lab.shot("05-epoch-curves-after-slider-step", lab.figure("epoch-curves"))
    assert after["slider"] == 0 != before["slider"], f"the slider did not step: {before} -> {after}"
    assert max(after["points"]) <= 1 < max(before["points"]), f"the curves were not cut back: {before} -> {after}"
    assert _visible(after) > MIN_HEIGHT_PX, f"'Per-epoch curves' collapsed after a slider step: {before} -> {after}"


def _slider(lab: Lab, label: str):
    from selenium.webdriver.common.by import By

    for slider in lab.driver.find_elements(By.CSS_SELECTOR, ".widget-slider"):
        if slider.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == label:
            return slider
    pytest.fail(f"no slider labelled {label!r}")


def _press(lab: Lab, slider, *keys) -> str:
    """Keys on the slider's handle, as a reader using the keyboard; returns the readout afterwards."""
    from selenium.webdriver.common.by import By

    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    lab.js("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", handle)
    for key in keys:
        handle.send_keys(key)
    time.sleep(0.5)
    return slider.find_element(By.CSS_SELECTOR, ".widget-readout").text.strip()


def test_chapter06_digit_slider_keeps_the_figure_visible_and_live_run_reports(lab):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    lab.open_and_run_all("06_accuracy")
    before = lab.heights("misclassified")
    assert _visible(before) > MIN_HEIGHT_PX, f"misclassified digits drawn without height: {before}"
    lab.shot("06-misclassified-before", lab.figure("misclassified"))
    _click(lab, _rail(lab, "misclassified"))  # the middle of the rail
    after = lab.heights("misclassified")
    lab.shot("06-misclassified-after-slider-step", lab.figure("misclassified"))
    assert after["slider"] != before["slider"] and after["title"] != before["title"], \
        f"the slider did not step to another digit: {before} -> {after}"
    assert _visible(after) > MIN_HEIGHT_PX, f"misclassified digits collapsed after a slider step: {before} -> {after}"

    # the live experiment: batch size to its largest (fewest steps), a larger learning rate, one epoch, Run
    assert _press(lab, _slider(lab, "batch size"), Keys.END) == "512"
    assert float(_press(lab, _slider(lab, "learning rate"), *[Keys.ARROW_RIGHT] * 4)) == pytest.approx(0.1, rel=1e-3)
    assert _press(lab, _slider(lab, "epochs"), Keys.HOME) == "1"
    live = lab.heights("live")
    assert live["points"] == [0, 0], f"the live figure has points before Run: {live}"
    button = next(b for b in lab.driver.find_elements(By.CSS_SELECTOR, "button.jupyter-button") if b.text == "Run")
    lab.js("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()

    def reported():
        texts = lab.js("return [...document.querySelectorAll('.widget-html-content')].map(e => e.innerText);")
        return next((t for t in texts if re.search(r"test accuracy \d+\.\d\d % after", t)), None)

    status = lab.wait("the live experiment's status line to report the result", reported, LIVE_TIMEOUT_S, every=1)
    assert re.match(r"done on (cpu|cuda): test accuracy \d+\.\d\d % after [\d.]+ s training", status), status
    live = lab.heights("live")
    lab.shot("06-live-after-run", lab.figure("live"))
    assert live["points"] == [1, 1], f"the live figure did not gain the epoch's points: {live}"
    assert _visible(live) > MIN_HEIGHT_PX, f"the live figure has no visible height: {live}"
    lab.shot("06-page-end")
