"""The side-by-side notebook in a real browser: JupyterLab on localhost, headless Debian chromium driven over the
Chrome DevTools Protocol (websocket-client), Run All Cells, then a screenshot in which both whole-slide viewers
(jupyter-islide) show slide pixels.

Marked ``browser`` and skipped by default; run it with::

    python -m pytest -m browser tests/validation/test_val_browser.py

It needs ``chromium`` on PATH (Debian: ``apt-get install -y chromium``) and JupyterLab with the jupyter-islide
extension (requirements/ci.txt). The screenshot is written to docs/images/notebook_side_by_side.png. The synthetic
slide is the tiny test slide, or ``ZWSI_SYNTHETIC_SLIDE`` when set (e.g. a quickstart ``demo.tiff``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.validation.test_val_notebooks import NOTEBOOKS, tiny_synthetic_slide
from validation.verdict import bundled_training_slide

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "images" / "notebook_side_by_side.png"
TOKEN = "zwsi-browser-test"
VIEWPORT = (1500, 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


class DevTools:
    """The few Chrome DevTools Protocol calls this test needs, over one websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """JupyterLab serving a copy of the notebook (the repository's copy keeps no outputs) from ``tmp_path``."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    pytest.importorskip("jupyterlab")
    pytest.importorskip("islide")
    pytest.importorskip("websocket")
    # resolved here: the notebook runs in its own folder, where a relative path would name nothing
    synthetic = Path(os.environ.get("ZWSI_SYNTHETIC_SLIDE") or tiny_synthetic_slide(tmp_path)).resolve()
    root, settings = tmp_path / "lab", tmp_path / "lab-settings"
    root.mkdir()
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    shutil.copy(NOTEBOOKS / "side_by_side_review.ipynb", root / "side_by_side_review.ipynb")
    port = _free_port()
    env = os.environ | {"ZWSI_SYNTHETIC_SLIDE": str(synthetic), "ZWSI_REAL_SLIDE": str(bundled_training_slide()),
                        "ZWSI_MAX_TILES": "8", "ZWSI_RESAMPLES": "20", "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                        "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-ws"),
                        "JUPYTER_RUNTIME_DIR": str(tmp_path / "lab-runtime")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={TOKEN}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=None"],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("w"))
    try:
        url = f"http://127.0.0.1:{port}"
        _wait("JupyterLab", lambda: urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2).status == 200,
              60)
        yield url, tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    port = _free_port()
    proc = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--remote-debugging-port={port}", f"--user-data-dir={tmp_path / 'chromium'}",
         f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def page_ws() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        tools = DevTools(_wait("chromium's DevTools endpoint", page_ws, 30))
        tools.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1,
                   mobile=False)
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


NOTEBOOK_JS = "Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.sessionContext && w.content)"
"""The open notebook panel (``shell.currentWidget`` stays null in a headless window that never has focus)."""


def _canvas_rects(tools: DevTools) -> list[dict[str, float]]:
    return list(tools.js("""[...document.querySelectorAll('canvas.islide-canvas')].map(c => {
        const r = c.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; })"""))


def test_side_by_side_notebook_shows_both_slides_in_the_viewer(lab, browser):
    url, logs = lab
    tools = browser
    tools.call("Page.navigate", url=f"{url}/lab/tree/side_by_side_review.ipynb?token={TOKEN}&reset")
    _wait("the notebook and its kernel", lambda: tools.js(
        f"(() => {{ const nb = window.jupyterapp && {NOTEBOOK_JS}; const s = nb && nb.sessionContext.session;"
        " return !!(s && s.kernel && s.kernel.status === 'idle'); })()"), 120)
    tools.js("window.jupyterapp.commands.execute('application:toggle-left-area')")  # room for the two viewers
    tools.js(f"(() => {{ const nb = {NOTEBOOK_JS}; window.jupyterapp.shell.activateById(nb.id); }})()")
    tools.js("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # every code cell has run (an execution count) and the kernel is idle again
    _wait("Run All Cells to finish", lambda: tools.js(
        f"(() => {{ const nb = {NOTEBOOK_JS};"
        " const cells = nb.content.widgets.filter(c => c.model.type === 'code');"
        " return cells.every(c => c.model.executionCount) && nb.sessionContext.session.kernel.status === 'idle';"
        " })()"), 240, every=2)
    errors = tools.js("document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"] .ansi-red-fg').length")
    assert not errors, (logs / "server.log").read_text()[-3000:]
    assert len(_wait("two viewer canvases", lambda: len(_canvas_rects(tools)) == 2 and _canvas_rects(tools), 60)) == 2
    tools.js("document.querySelectorAll('.islide-view')[0].closest('.jp-Cell').scrollIntoView({block: 'start'})")
    time.sleep(3)  # tiles for the final viewport arrive over the widget comm

    def shot() -> tuple[np.ndarray, list[dict[str, float]]] | None:
        png = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        rects = _canvas_rects(tools)
        for r in rects:
            crop = image[int(r["y"]) + 2:int(r["y"] + r["h"]) - 2, int(r["x"]) + 2:int(r["x"] + r["w"]) - 2]
            if crop.size == 0 or (crop.min(axis=-1) < 200).mean() < 0.02 or crop.std() < 10:
                return None  # blank (or not yet drawn) viewer
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(SCREENSHOT, optimize=True)
        return image, rects

    image, rects = _wait("slide pixels in both viewers", shot, 60, every=2)
    assert image.shape[:2] == (VIEWPORT[1], VIEWPORT[0]) and len(rects) == 2
