"""The JupyterLite site (``./build.sh lite``) runs docs/notebook.ipynb in headless Chromium.

Serves the repository root on localhost (the site at /dist/lite/, as docs/guide.md says),
opens the notebook in the site's Jupyter Notebook app, runs every cell in the Pyodide
kernel (which installs the ping_web wheel with ``%pip`` from the site's own index, then
runs two MessagingClients on encrypted IndexedDB), and checks the printed output: the
decrypted messages, the history restored from IndexedDB, and no error. Chromium resolves
no host but 127.0.0.1, so nothing comes from a CDN or PyPI. The output text and a
screenshot go to test-output/.

Needs Debian's chromium and chromium-driver, and dist/lite (built if missing, or run
``./build.sh lite``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "dist" / "lite"
OUTPUT = ROOT / "test-output"
TIMEOUT_S = float(os.environ.get("PING_LITE_TIMEOUT", "240"))

PYODIDE_PACKAGE = ROOT / "node_modules" / "pyodide" / "package.json"  # absent before ./build.sh (tier skipped)
PYODIDE_VERSION = json.loads(PYODIDE_PACKAGE.read_text())["version"] if PYODIDE_PACKAGE.exists() else "?"
EXPECTED = [
    f"Pyodide {PYODIDE_VERSION}; OpenMLS wasm module:",
    "bob decrypted 'Hello from the notebook!' from alice",
    "alice decrypted 'Hi Alice, this went through OpenMLS in wasm.' from bob",
    "bob's history, restored from IndexedDB:",
    "  alice: Hello from the notebook!",
    "  bob: Hi Alice, this went through OpenMLS in wasm.",
    "alice decrypted 'Still here after a restart.' from bob",
    "exported secrets agree: True",
    "notebook finished",
]

# Runs in the page: waits for the app, the notebook and its kernel, then runs all cells.
# Resolves with "" once the run has started, or an error text.
RUN_ALL = """
const done = arguments[arguments.length - 1];
(async () => {
  const until = async (what, test, ms) => {
    const end = Date.now() + ms;
    for (;;) {
      const value = test();
      if (value) return value;
      if (Date.now() > end) throw new Error("timed out waiting for " + what);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const app = await until("window.jupyterapp", () => window.jupyterapp, 60000);
  await app.restored;
  const panel = await until("the notebook", () => {
    const w = app.shell.currentWidget;
    return w && w.sessionContext && w.content && w.content.widgets ? w : null;
  }, 60000);
  await panel.context.ready;
  await panel.sessionContext.ready;
  await until("the kernel", () => panel.sessionContext.session && panel.sessionContext.session.kernel, 60000);
  await app.commands.execute("notebook:run-all-cells");
  return "";
})().then(done, (e) => done(String(e && e.stack || e)));
"""

# The text of every output of every cell, and whether the kernel is done.
OUTPUTS = """
const panel = window.jupyterapp.shell.currentWidget;
const cells = panel.content.model.cells;
const texts = [];
let errors = 0;
for (let i = 0; i < cells.length; i++) {
  const cell = cells.get(i);
  if (cell.type !== "code") continue;
  for (let j = 0; j < cell.outputs.length; j++) {
    const out = cell.outputs.get(j).toJSON();
    if (out.output_type === "error") {
      errors++;
      texts.push(out.ename + ": " + out.evalue + "\\n" + (out.traceback || []).join("\\n"));
    } else if (out.output_type === "stream") {
      texts.push(Array.isArray(out.text) ? out.text.join("") : out.text);
    } else if (out.data && out.data["text/plain"] !== undefined) {
      const t = out.data["text/plain"];
      texts.push(Array.isArray(t) ? t.join("") : t);
    }
  }
}
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return {text: texts.join(""), errors, status: kernel ? kernel.status : "none"};
"""


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "jupyter-lite.json").exists():
        subprocess.run([str(ROOT / "build.sh"), "lite"], check=True, cwd=ROOT)
    return SITE


def test_notebook_runs_in_jupyterlite(site: Path, server, driver, console) -> None:
    base, served = server
    started = time.monotonic()
    driver.get(f"{base}/dist/lite/notebooks/index.html?path=notebook.ipynb")
    problem = driver.execute_async_script(RUN_ALL)
    assert problem == "", f"could not start the notebook: {problem}"

    state = {"text": "", "errors": 0, "status": "none"}
    deadline = started + TIMEOUT_S
    while time.monotonic() < deadline:
        state = driver.execute_script(OUTPUTS)
        if state["errors"] or "notebook finished" in state["text"]:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started

    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "lite-notebook-output.txt").write_text(state["text"])
    driver.save_screenshot(str(OUTPUT / "lite-notebook.png"))
    if state["errors"] or "notebook finished" not in state["text"]:
        pytest.fail(
            f"the notebook did not finish cleanly in {elapsed:.0f} s (kernel {state['status']}):\n"
            f"{state['text'][-4000:]}\n--- browser console ---\n{console()}"
        )
    missing = [line for line in EXPECTED if line not in state["text"]]
    assert not missing, f"output lacks {missing}:\n{state['text']}"
    # The kernel ran the site's own Pyodide, and %pip took the wheel from the site's index.
    for path in ("static/pyodide/pyodide.asm.wasm", "pypi/all.json", "pypi/ping_web-0.1.0-py3-none-any.whl"):
        assert f"/dist/lite/{path}" in served, f"/dist/lite/{path} was never requested"
