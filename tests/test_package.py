"""Packaging conventions: public names, typing marker, lazy optional layers, picklable errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import bgdl_nb as bg


def test_all_is_sorted_and_complete():
    assert bg.__all__ == sorted(bg.__all__)
    assert all(hasattr(bg, name) for name in bg.__all__)


def test_py_typed_is_shipped():
    assert (Path(bg.__file__).parent / "py.typed").exists()


def test_import_loads_no_optional_layer():
    optional = ("pandas", "ipywidgets", "matplotlib", "pooch", "fsspec")
    code = f"import sys, bgdl_nb; print(sorted(m for m in {optional!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_loads_no_http_library_until_an_engine_runs_here():
    # a command handed to the transfer service checks its input and never needs aiohttp (a third of a second)
    code = ("import sys, bgdl_nb.cli, bgdl_nb._checks as c; c.check_url('http://127.0.0.1/x'); "
            "c.check_headers('http://127.0.0.1/x', {'Accept': '*/*'}); print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_download_handed_to_the_service_loads_no_event_loop_and_no_cluster_code(origin, tmp_path):
    # what a command through the transfer service never needs, each a few tens of milliseconds of its start
    code = ("import atexit, sys; from bgdl_nb.cli import main; "
            "atexit.register(lambda: print([m for m in ('aiohttp', 'asyncio', 'bgdl_nb._cluster') "
            "if m in sys.modules], file=sys.stderr)); sys.exit(main(sys.argv[1:]))")
    url = origin.url("lean.bin", 5000)
    try:
        done = subprocess.run([sys.executable, "-c", code, "fetch", url, "-o", str(tmp_path), "-q"], capture_output=True,
                              text=True, env={**os.environ, "BGDL_IN_PROCESS": "0"}, timeout=120)
    finally:
        subprocess.run([sys.executable, "-m", "bgdl_nb.cli", "service", "stop"], capture_output=True, timeout=60)
    assert done.returncode == 0 and (tmp_path / "lean.bin").stat().st_size == 5000, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"
    assert bg.cluster_job.__module__ == "bgdl_nb._cluster"  # loaded when first used


def test_errors_pickle_with_their_context():
    error = bg.ChecksumMismatch("bad", expected="a", actual="b", url="http://h/x", task_identifier=3,
                                resume_data=b"rd")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is bg.ChecksumMismatch
    assert (copy.expected, copy.actual, copy.url, copy.task_identifier, copy.resume_data) == ("a", "b", "http://h/x",
                                                                                              3, b"rd")
    fetch_error = pickle.loads(pickle.dumps(bg.FetchError("f", errors={"u": error})))
    assert fetch_error.errors["u"].expected == "a"


def test_error_tree():
    for cls in (bg.UnsupportedURL, bg.InvalidDestination, bg.InvalidResumeData, bg.InvalidConfiguration):
        assert issubclass(cls, bg.InvalidInput) and issubclass(cls, ValueError)
    for cls in (bg.NetworkError, bg.TransferTimeout, bg.Cancelled, bg.DiskFull, bg.ChecksumMismatch):
        assert issubclass(cls, bg.TransferError)
    assert issubclass(bg.SessionBusy, bg.SessionError) and issubclass(bg.BgdlError, Exception)
