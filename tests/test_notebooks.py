"""Every notebook, run the way a person runs it: cell by cell in a real kernel, "Run All"
twice in the same folder, from a kernel whose PATH does not hold the package's scripts
(a registered kernelspec or an IDE's interpreter picker). A cell that kills its kernel
is followed by a kernel restart and, at once, the next cell."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_runner import run_all, text_of

from helpers import wait_until

pytestmark = pytest.mark.kernel
NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
RESTARTING = {"02-resume-across-kernel-restarts.ipynb", "05-background-service.ipynb"}
WIDGET = "application/vnd.jupyter.widget-view+json"


def _restarts(nb) -> bool:
    return any("restart-kernel" in c.metadata.get("tags", []) for c in nb.cells)


def test_every_notebook_is_covered_and_listed():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert len(names) >= 5
    readme = (NOTEBOOKS.parent / "README.md").read_text()
    for name in names:
        assert _restarts(nbformat.read(NOTEBOOKS / name, as_version=4)) == (name in RESTARTING)
        assert name.removesuffix(".ipynb") in readme, f"README does not list {name}"


def _path_without_our_scripts() -> str:
    """PATH minus the interpreter's bin directory and any directory with a ``bgdl`` script."""
    ours = Path(sys.executable).parent.resolve()
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and Path(d).resolve() != ours and not (Path(d) / "bgdl").exists()]
    return os.pathsep.join(keep)


def _count(outputs: list[list[dict]], mime: str) -> int:
    return sum(mime in m["content"].get("data", {}) for cell in outputs for m in cell
               if m["msg_type"] in ("execute_result", "display_data"))


def _origins_stopped(folder: Path) -> bool:
    from bgdl_nb.demo import RemoteOrigin
    for info in folder.glob("demo-origin*.json"):
        try:
            os.kill(RemoteOrigin.load(info).pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_twice_in_the_same_folder(name, tmp_path):
    shutil.copy(NOTEBOOKS / name, tmp_path / name)
    env = {**os.environ, "PATH": _path_without_our_scripts()}
    try:
        for run in (1, 2):
            outputs = run_all(tmp_path / name, env)
            text = "".join(text_of(cell) for cell in outputs)
            if name.startswith("01"):
                if run == 1:  # the second run finds both files complete and returns at once
                    assert _count(outputs, WIDGET), "fetch() showed no progress panel"
                assert "same paths: True" in text
            if name.startswith("02"):
                assert (tmp_path / "data" / "restart" / "survey.bin").stat().st_size == 48_000_000
                assert "one continuous event log across" in text and "complete and verified" in text
                resumed = re.search(r"continued from byte ([0-9,]+) of 48,000,000", text)
                assert resumed, f"run {run} of 02 shows no resume:\n{text[-2000:]}"
                assert 0 < int(resumed[1].replace(",", "")) < 48_000_000, resumed[0]  # mid-file, from the partial bytes
            if name.startswith("04"):
                assert _count(outputs, "image/png") >= 2, "both plots must render"
                slots = re.search(r"(\d) of 6 tasks waited for a free slot", text)
                assert slots and int(slots[1]) >= 3, text[-2000:]  # six files, two at a time
                backoff = re.search(r"the 503 task waited ([0-9.]+) s of retry backoff", text)
                assert backoff and float(backoff[1]) >= 1.0, text[-2000:]  # Retry-After: 1 was honoured
                assert "the reset connection was retried 1 time(s) and the file completed: True" in text
            if name.startswith("05"):
                lines = [line for line in text.splitlines() if line.startswith("downloaded with no kernel attached:")]
                assert lines and int(lines[0].split(":")[1].split()[0].replace(",", "")) > 0, text
                assert text.count("did_finish_events_for_background_session") == 1
                assert "did_finish_downloading_to" in text
            if name.startswith("06"):  # the second run shows the job's true state too
                assert "200 files, all byte-identical: True" in text and "40 files, all byte-identical: True" in text
                assert "notebook-06 · 200/200 files · 49.8 MB of 49.8 MB" in text, text[-3000:]  # its record, as it ended
                continued = re.search(r"(\d+) files continued from their partial bytes", text)
                assert continued and int(continued[1]) > 0, text[-2000:]
            if name.startswith("07"):
                for shown in ("prefetched 200 registry files", "every Pooch.fetch found its file: True",
                              "365 rows, cached at", "a wrong md5 keeps nothing: ChecksumMismatch | wrong.bin at "
                              "the destination: False", "stations/north.csv 5023 bytes",
                              "the second call extracted nothing again: True", "30 files in ['0', '1', '2']",
                              "present and matching files skipped without a request: True",
                              "the server named it report-2026.csv"):
                    assert shown in text, f"run {run} of 07 does not show {shown!r}:\n{text[-3000:]}"
            if name.startswith("08"):
                for shown in ("the last 65,536 bytes match the server's: True", "they match the server's: True",
                              "scan.bin 30,000,000 bytes, identical to the server's: True",
                              "200000 rows of one column; mean 49.95"):
                    assert shown in text, f"run {run} of 08 does not show {shown!r}:\n{text[-3000:]}"
                tail = re.search(r"read the last 65,536 in [0-9.]+ s with ([0-9,]+) of them on disk", text)
                assert tail, text[-2000:]
                here = int(tail[1].replace(",", ""))
                # the first run read the end before most of the file was here; the second found it whole
                assert (here < 15_000_000) if run == 1 else (here == 30_000_000), tail[0]
            # the notebook's last cell stops its demo origin: nothing is left running
            wait_until(lambda: _origins_stopped(tmp_path), timeout=30, what=f"run {run}'s demo origin to stop")
    finally:
        from bgdl_nb.demo import RemoteOrigin
        for info in tmp_path.glob("demo-origin*.json"):
            RemoteOrigin.load(info).stop()


def test_a_saved_notebook_keeps_the_final_state_of_its_panels(origin, tmp_path, state_dir):
    """A finished fetch() panel and a closed session's panel leave a static record in the
    saved .ipynb (text/html and text/plain: every file, its final size and outcome) in
    place of the widget, whose model a reopened notebook or a viewer would not have."""
    import nbclient

    good, missing = origin.url("kept.bin", 3_000_000, rate=6_000_000), origin.url("gone.bin", 10, status=404)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import bgdl_nb as bg\n"
                                  f"try:\n    bg.fetch([{good!r}, {missing!r}], dest='data')\n"
                                  "except bg.FetchError as exc:\n    print('failed:', len(exc.errors))"),
        nbformat.v4.new_code_cell(f"s = bg.Session(bg.Configuration.background('rec'))\n"
                                  f"t = s.download_task({origin.url('s.bin', 1_000_000)!r}, 'data/s.bin').resume()\n"
                                  "panel = s.show()"),
        nbformat.v4.new_code_cell("import threading\nt.wait(60)\ns.close()\n"
                                  "for _ in range(200):  # the panel's timer sees the close within a tick or two\n"
                                  "    if getattr(panel, '_recorded', False):\n        break\n"
                                  "    threading.Event().wait(0.05)\n"
                                  "print('recorded', panel._recorded)"),
    ])
    path = tmp_path / "record.ipynb"
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",  # BGDL_STATE_DIR: the test's, inherited
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, path)
    saved = nbformat.read(path, as_version=4)
    fetch_out = [o for o in saved.cells[0].outputs if o.output_type == "display_data"]
    assert len(fetch_out) == 1 and WIDGET not in fetch_out[0].data, "the finished panel is still a widget"
    record = fetch_out[0].data["text/html"]
    assert "bgdl-record" in record and "kept.bin" in record and "done, 3.0 MB" in record
    assert "gone.bin" in record and "failed: HTTP 404" in record
    assert "kept.bin: done, 3.0 MB" in fetch_out[0].data["text/plain"]
    show_out = [o for o in saved.cells[1].outputs if o.output_type == "display_data"]
    assert len(show_out) == 1 and WIDGET not in show_out[0].data, "the closed session's panel is still a widget"
    assert "s.bin" in show_out[0].data["text/html"] and "done, 1.0 MB" in show_out[0].data["text/plain"]
    assert "recorded True" in "".join(o.get("text", "") for o in saved.cells[2].outputs)
