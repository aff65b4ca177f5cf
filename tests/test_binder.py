"""binder/ alone builds a working environment: a fresh virtual environment installed
from binder/requirements.txt imports bgdl_nb and runs notebook 01 in its own kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.kernel


def test_binder_files_are_what_repo2docker_reads():
    files = sorted(p.name for p in (ROOT / "binder").iterdir())
    assert files == ["requirements.txt", "runtime.txt"]
    assert (ROOT / "binder" / "runtime.txt").read_text().strip().startswith("python-3.1")
    text = (ROOT / "binder" / "requirements.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [".[notebook,cluster,pooch,fsspec]"]  # every notebook's needs: 06 runs Dask, 07 pooch and fsspec


def test_fresh_environment_from_binder_runs_notebook_01(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), "-c", "import bgdl_nb, distributed; print(bgdl_nb.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True)
    assert str(env_dir) in check.stdout  # installed into the fresh environment, not found elsewhere
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "01-quickstart.ipynb", work)
    run = subprocess.run([str(env_dir / "bin" / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
                          "--ExecutePreprocessor.timeout=300", "--output", "executed.ipynb", "01-quickstart.ipynb"],
                         cwd=work, env={**env, "PATH": f"{env_dir / 'bin'}:{env['PATH']}"},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "data" / "quickstart" / "measurements.parquet").stat().st_size == 40_000_000

