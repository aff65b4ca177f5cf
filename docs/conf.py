"""Sphinx configuration of bgdl_nb's documentation (``pip install '.[docs]'``; build with
``sphinx-build -W --keep-going docs docs/_build/html``)."""

from __future__ import annotations

import importlib.metadata

project = "bgdl_nb"
author = "the bgdl_nb authors"
release = importlib.metadata.version("bgdl_nb")
version = release

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "sphinx_copybutton",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# The notebooks are stored executed (docs/execute_notebooks.py writes them): two of them
# kill their kernel on purpose and several need the transfer service, so the build shows
# the output of real runs instead of running them again.
nb_execution_mode = "off"
nb_output_stderr = "remove"

autodoc_member_order = "bysource"
autodoc_typehints = "none"          # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = "bgdl_nb"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True


# Two tables made from the package itself, so they cannot drift from it: the exception
# tree and the event log's columns with their dtypes.

from docutils import nodes  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402


class ExceptionTree(SphinxDirective):
    """``bgdl-exception-tree``: every exception of bgdl_nb under BgdlError, as a tree."""

    def run(self) -> list[nodes.Node]:
        import bgdl_nb

        public = {getattr(bgdl_nb, n) for n in bgdl_nb.__all__}
        lines: list[str] = []

        def walk(cls: type, depth: int) -> None:
            bases = [b.__name__ for b in cls.__bases__ if b.__module__ == "builtins" and b is not Exception]
            extra = f"  (also {', '.join(bases)})" if bases else ""
            lines.append("    " * depth + cls.__name__ + extra)
            for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
                if sub in public:
                    walk(sub, depth + 1)

        walk(bgdl_nb.BgdlError, 0)
        text = "\n".join(lines)
        return [nodes.literal_block(text, text)]


class EventColumns(SphinxDirective):
    """``bgdl-event-columns``: the columns of ``session.events`` and their pandas dtypes."""

    def run(self) -> list[nodes.Node]:
        from bgdl_nb._events import EVENT_COLUMNS
        from bgdl_nb.notebook.frame import events_frame

        dtypes = events_frame([]).dtypes
        table = nodes.table()
        group = nodes.tgroup(cols=2)
        table += group
        group += [nodes.colspec(colwidth=1), nodes.colspec(colwidth=2)]
        head, body = nodes.thead(), nodes.tbody()
        group += [head, body]

        def row(*cells: str) -> nodes.row:
            r = nodes.row()
            for cell in cells:
                r += nodes.entry("", nodes.paragraph(text=cell))
            return r

        head += row("column", "dtype")
        for name in EVENT_COLUMNS:
            body += row(name, str(dtypes[name]))
        return [table]


def setup(app):  # type: ignore[no-untyped-def]
    app.add_directive("bgdl-exception-tree", ExceptionTree)
    app.add_directive("bgdl-event-columns", EventColumns)
    return {"parallel_read_safe": True}
