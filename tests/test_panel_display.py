"""session.show() as the last line of a cell shows the panel once, in a real kernel."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_show_as_the_last_line_of_a_cell_displays_one_panel(origin, tmp_path):
    url = origin.url("p", 1000)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "import bgdl_nb as bg\n"
            "s = bg.Session(bg.Configuration.default())\n"
            f"t = s.download_task({url!r}, {str(tmp_path / 'p')!r}).resume()\n"
            "t.wait(30)\n"
            "s.show()"),
        nbformat.v4.new_code_cell("panel = s.show()\npanel"),  # the handle, evaluated again in the same cell
        nbformat.v4.new_code_cell("panel"),  # a later cell asks for it on purpose: shown again
    ])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    views = [sum(WIDGET in out.get("data", {}) for out in cell.outputs) for cell in nb.cells]
    assert views == [1, 1, 1], views


def test_a_fetch_error_in_a_notebook_shows_the_urls_not_our_frames(origin, tmp_path):
    missing = f"{origin.base_url}/no/such.bin"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import bgdl_nb as bg\n"
        f"bg.fetch([{origin.url('fine', 1000)!r}, {missing!r}], dest='data', progress=False)")])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    [error] = [o for o in nb.cells[0].outputs if o.output_type == "error"]
    shown = "\n".join(error.traceback)
    assert error.ename == "FetchError" and "1 of 2 downloads did not complete" in shown
    assert shown.count(missing) == 1 and "answered HTTP 404" in shown  # the URL named once
    assert "_fetch.py" not in shown and "bgdl_nb/" not in shown  # no internal frames
