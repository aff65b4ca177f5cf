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
