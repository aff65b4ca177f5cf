"""Store the notebooks of ``notebooks/`` with the outputs of a real run, for the docs.

Each notebook is run as a person runs it ("Run All" in a kernel started in its folder;
a cell that kills its kernel is followed by a new kernel), in a temporary folder, and
written to ``docs/notebooks/`` with its outputs. A page has no kernel, so a panel shows
as the static record a finished panel leaves, and one still live at the end of the run
as a line saying so.

Run from a checkout with the test extra installed:  python docs/execute_notebooks.py [NAME ...]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from notebook_runner import run_all  # noqa: E402  (the runner the notebook tests use)

WIDGET = "application/vnd.jupyter.widget-view+json"


def _for_a_page(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET in data and "text/html" in data:  # the record a finished panel left
                del data[WIDGET]
            elif WIDGET in data:  # a panel still live when the run ended: a page cannot show it
                out = nbformat.v4.new_output("stream", name="stdout",
                                             text="[a live progress panel: it shows in a running notebook]\n")
            kept.append(out)
        if "outputs" in cell:
            cell.outputs = kept
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)


def main(names: list[str]) -> None:
    import os

    source = ROOT / "notebooks"
    target = ROOT / "docs" / "notebooks"
    target.mkdir(exist_ok=True)
    chosen = sorted(p for p in source.glob("*.ipynb") if not names or any(n in p.name for n in names))
    for notebook in chosen:
        with tempfile.TemporaryDirectory(prefix="bgdl-docs-") as folder:
            work = Path(folder) / notebook.name
            shutil.copy(notebook, work)
            env = {**os.environ, "BGDL_STATE_DIR": str(Path(folder) / "state")}
            print(f"running {notebook.name} ...", flush=True)
            try:
                run_all(work, env, keep_outputs=True)
            finally:
                _stop_service(env)
            _for_a_page(work)
            shutil.copy(work, target / notebook.name)
            print(f"  stored {target / notebook.name}", flush=True)


def _stop_service(env: dict[str, str]) -> None:
    """Stop the transfer service of the run's own state folder, and its demo origins."""
    import subprocess

    subprocess.run([sys.executable, "-m", "bgdl_nb.cli", "service", "stop"], env=env, capture_output=True,
                   timeout=60, check=False)


if __name__ == "__main__":
    main(sys.argv[1:])
