"""Notebook layers over the UI-free core: DataFrames, widgets and plots.

They need the ``notebook`` extra (``pip install 'bgdl_nb[notebook]'``); ``import
bgdl_nb`` never imports them.
"""


def require(module: str) -> None:
    """Raise an ImportError naming the extra to install when ``module`` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"this feature needs {module}; install it with: pip install 'bgdl_nb[notebook]'"
        )
