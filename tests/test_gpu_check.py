"""benchmarks/gpu_check.sh, the one-call GPU check: its syntax, and a dry run on a machine
without a GPU, where the install and the probe run and the GPU steps skip with a reason.

    $ python -m pytest -q tests/test_gpu_check.py
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, mpi_env
from mpi_dml.devices.gpu import unavailable_reason

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
GPU_REASON = unavailable_reason()


def test_the_gpu_check_parses():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_gpu_check_refuses_unknown_arguments(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.strip() == "gpu_check.sh: unknown argument '--fast'; the only one is --dry-run"


@pytest.mark.mpi
@pytest.mark.skipif(GPU_REASON is None, reason="a GPU is usable here: the check would run it")
@pytest.mark.parametrize("dry_run", [True, False])
def test_without_a_gpu_the_check_installs_probes_and_skips_the_rest(tmp_path, dry_run):
    out = tmp_path / "out"
    env = mpi_env({"OUT": str(out), "PYTHON": sys.executable, "VENV": str(tmp_path / "venv"),
                   "WHEELS": str(tmp_path / "no-wheels")})
    r = subprocess.run(["bash", str(SCRIPT), *(["--dry-run"] if dry_run else [])],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    why = "dry run: install and probe only" if dry_run else f"needs a GPU: {GPU_REASON}"
    assert summary[0].startswith(f"install: PASS ({tmp_path / 'venv'}; no wheels in ")
    assert summary[1:] == [f"probe: PASS (no usable GPU here: {GPU_REASON})",
                           f"pytest -m gpu: SKIP ({why})", f"benchmark: SKIP ({why})"]
    assert r.stdout.splitlines() == summary
    facts = json.loads((out / "probe.json").read_text())
    import mpi4py
    import numpy
    assert facts["gpu_unavailable"] == GPU_REASON
    assert facts["numpy"] == numpy.__version__ and facts["mpi4py"] == mpi4py.__version__
    assert facts["executable"] == str(tmp_path / "venv" / "bin" / "python")
    probe = (out / "probe.log").read_text()
    assert '"rank": 1' in probe  # mpi_dml info ran on 2 ranks
    assert sorted(p.name for p in out.iterdir()) == ["install.log", "probe.json", "probe.log",
                                                     "summary.txt"]
