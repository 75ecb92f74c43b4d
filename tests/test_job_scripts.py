"""The job scripts in slurm/, run by bash without Slurm.

    $ .venv/bin/pytest -q tests/test_job_scripts.py

Each script runs as written, with ``srun`` and ``scontrol`` on PATH replaced by small
scripts that record what they were given and exit with a chosen status, so the
scripts' own logic (arguments under ``set -u``, Numba's cache folder, when to requeue)
is checked in a second. tests/test_slurm.py submits the same files to a real Slurm.

MPI_DML_TEST_BASH names another bash to run them with, such as a bash 4.2 built from
source (RHEL/CentOS 7's), which stops at an unguarded empty array under set -u:

    $ MPI_DML_TEST_BASH=/opt/bash-4.2/bin/bash .venv/bin/pytest -q tests/test_job_scripts.py
"""
from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest

from conftest import ROOT

SCRIPTS = ROOT / "slurm"
BASH = os.environ.get("MPI_DML_TEST_BASH", "bash")
ALL = sorted(p.name for p in SCRIPTS.glob("*.sbatch"))

# ${name[@]+"${name[@]}"}: expands to nothing when the array is empty, on every bash.
GUARDED = re.compile(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}')
ARRAY_EXPANSION = re.compile(r"\$\{(\w+)\[[@*]\]\}")


def unguarded_array_expansions(text: str) -> list[str]:
    """Names of arrays expanded whole without the guard that bash before 4.4 needs.

    Under ``set -u``, bash 4.3 and older (RHEL/CentOS 7 has 4.2) stop with "unbound
    variable" at ``"${a[@]}"`` when ``a`` is empty. ``${#a[@]}`` (the length) and
    ``${a[$i]}`` (one element) are not whole-array expansions and are fine.
    """
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return ARRAY_EXPANSION.findall(GUARDED.sub("", code))


@pytest.mark.parametrize("text, names", [
    ('srun x "${config[@]}" "$@"', ["config"]),
    ("echo ${LRS[*]}", ["LRS"]),
    ('srun x ${config[@]+"${config[@]}"} "$@"', []),
    ('n=${#LRS[@]}; lr=${LRS[$task]}', []),
    ('# a comment may say "${config[@]}"', []),
    ('${a[@]+"${b[@]}"}', ["b"]),  # a guard on another array guards nothing
])
def test_unguarded_array_expansions_are_found(text, names):
    assert unguarded_array_expansions(text) == names


@pytest.mark.parametrize("script", ALL)
def test_scripts_guard_every_array_expansion(script):
    text = (SCRIPTS / script).read_text()
    assert unguarded_array_expansions(text) == [], (
        f"slurm/{script}: write each array expansion as ${{a[@]+\"${{a[@]}}\"}}: bash "
        f"before 4.4 stops at an empty \"${{a[@]}}\" under set -u")


@pytest.mark.parametrize("values, words", [
    ("()", ["x"]),
    ('(--config "my file.toml")', ["--config", "my file.toml", "x"]),
    ('("" "a  b")', ["", "a  b", "x"]),
])
def test_guarded_expansion_keeps_words_under_set_u(values, words):
    """The guard gives exactly the array's words (spaces and empty words kept), or none."""
    done = subprocess.run(
        [BASH, "-c", f'set -euo pipefail; a={values}; '
                       f'printf "<%s>\\n" ${{a[@]+"${{a[@]}}"}} x'],
        capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"<{w}>" for w in words]


# --- the scripts run with stand-ins for srun and scontrol ---------------------------

FAKE_SRUN = """#!/bin/bash
# Records its arguments and environment, plays one run of the engine, exits STATUS.
printf '%s\\n' "$@" > "$FAKE/argv"
printf '%s\\n' "${NUMBA_CACHE_DIR-<unset>}" > "$FAKE/numba_cache_dir"
if [ -n "${FAKE_WRITES_MARKER:-}" ]; then
    mkdir -p "$OUT" && echo "$OUT/checkpoints/ckpt-50.safetensors" > "$OUT/PREEMPTED"
fi
exit "${FAKE_STATUS:-0}"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$*" >> "$FAKE/scontrol"
"""


def run_script(tmp_path, script, *args, **env) -> subprocess.CompletedProcess:
    """bash slurm/SCRIPT ARGS as Slurm would start it, with the stand-ins on PATH."""
    fake = tmp_path / "fake"
    bin_dir = fake / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "NUMBA_CACHE_DIR", "XDG_"))}
    base.update({
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE": str(fake),
        "HOME": str(tmp_path / "home"), "PYTHON": "python3", "OUT": str(tmp_path / "out"),
        "SLURM_JOB_ID": "1234", "SLURM_JOB_NAME": "t", "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_PER_TASK": "1",
        "SLURM_ARRAY_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "0"})
    base.update({k: str(v) for k, v in env.items()})
    return subprocess.run([BASH, str(SCRIPTS / script), *map(str, args)], cwd=tmp_path,
                          env=base, capture_output=True, text=True, timeout=30)


def srun_argv(tmp_path) -> list[str]:
    return (tmp_path / "fake" / "argv").read_text().splitlines()


def requeues(tmp_path) -> list[str]:
    calls = tmp_path / "fake" / "scontrol"
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("script", ALL)
def test_scripts_pass_config_and_arguments_as_given(script, tmp_path):
    """No CONFIG: no empty word where --config would go. CONFIG: both words, spaces kept."""
    done = run_script(tmp_path, script, "--epochs", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    argv = srun_argv(tmp_path)
    assert "--config" not in argv and "" not in argv, argv
    assert argv[-2:] == ["--epochs", "3"], argv

    done = run_script(tmp_path, script, "--epochs", "3", CONFIG="my run.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    argv = srun_argv(tmp_path)
    assert argv[argv.index("--config") + 1] == "my run.toml", argv


@pytest.mark.parametrize("script", ALL)
def test_scripts_keep_numba_cache_in_a_folder_of_the_user(script, tmp_path):
    """Numba unpickles its cache: each job uses a folder under the user's cache, mode 700."""
    xdg = tmp_path / "xdg"
    done = run_script(tmp_path, script, XDG_CACHE_HOME=xdg)
    assert done.returncode == 0, done.stdout + done.stderr
    cache = xdg / "mpi_dml" / "numba"
    assert (tmp_path / "fake" / "numba_cache_dir").read_text().strip() == str(cache)
    # Every folder the script created is the user's alone: a folder above the cache
    # that others can write lets them swap the cache folder for one of their own.
    for folder in (xdg, xdg / "mpi_dml", cache):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    # Without XDG_CACHE_HOME: under HOME; a NUMBA_CACHE_DIR that is set wins.
    done = run_script(tmp_path, script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "fake" / "numba_cache_dir").read_text().strip() == \
        str(tmp_path / "home" / ".cache" / "mpi_dml" / "numba")
    chosen = tmp_path / "chosen"
    done = run_script(tmp_path, script, NUMBA_CACHE_DIR=chosen)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "fake" / "numba_cache_dir").read_text().strip() == str(chosen)
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o700


def write_old_marker(tmp_path):
    """OUT/PREEMPTED as an earlier, stopped run of the job left it."""
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "PREEMPTED").write_text("ckpt-10.safetensors\n")


@pytest.mark.parametrize("status, writes_marker, old_marker, requeued", [
    (75, True, False, True),    # stopped on a signal, checkpoint written
    (75, False, True, True),    # 75 alone is a clean stop (e.g. before the first step)
    (137, True, False, True),   # srun reported a rank killed on its way out of a clean stop
    (0, False, True, False),    # finished
    (2, False, True, False),    # failed before training, with an earlier run's marker left
    (1, False, True, False),    # crashed while loading (out of memory, a bug)
    (137, False, True, False),  # killed, and the marker is the earlier run's
])
def test_preemptible_requeues_only_when_this_run_stopped_cleanly(
        tmp_path, status, writes_marker, old_marker, requeued):
    if old_marker:
        write_old_marker(tmp_path)
    done = run_script(tmp_path, "preemptible.sbatch", FAKE_STATUS=status,
                      FAKE_WRITES_MARKER="1" if writes_marker else "")
    assert done.returncode == status, done.stdout + done.stderr
    assert requeues(tmp_path) == (["requeue 1234"] if requeued else []), done.stdout
    assert f"training exited with {status}" in done.stdout


def test_preemptible_ignores_a_marker_it_cannot_remove(tmp_path):
    """A marker that stays (OUT not writable) says nothing about this run: no requeue."""
    out = tmp_path / "out"
    (out / "PREEMPTED").mkdir(parents=True)  # rm -f cannot remove a folder, even as root
    done = run_script(tmp_path, "preemptible.sbatch", FAKE_STATUS=2)
    assert done.returncode == 2, done.stdout + done.stderr
    assert requeues(tmp_path) == []
    assert "PREEMPTED" in done.stdout + done.stderr  # and the log says why


def unusable_cache_folders(tmp_path):
    """Folders Numba must not cache in (it would fall back to the shared __pycache__)."""
    (tmp_path / "file").write_text("")
    yield "a file", tmp_path / "file"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    yield "group-writable", shared
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)  # nobody's
        yield "another user's", theirs


@pytest.mark.parametrize("script", ALL)
def test_scripts_refuse_a_numba_cache_folder_others_control(script, tmp_path):
    for what, folder in unusable_cache_folders(tmp_path):
        done = run_script(tmp_path, script, NUMBA_CACHE_DIR=folder)
        assert done.returncode == 2, f"{what}: {done.stdout}{done.stderr}"
        assert f"NUMBA_CACHE_DIR={folder} must be a folder that you own" in done.stderr, what
        assert not (tmp_path / "fake" / "argv").exists(), f"{what}: srun ran"
