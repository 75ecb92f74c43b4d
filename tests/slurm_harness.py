"""A real one-node Slurm for the tests in test_slurm.py, started by hand (no systemd).

    $ .venv/bin/pytest -q tests/test_slurm.py

The session fixture ``slurm_cluster`` installs Debian's ``slurmctld slurmd slurm-client
munge`` when they are missing (as root, with apt-get), then starts munged (as the munge
user, with its own key and socket), slurmctld and slurmd from a generated slurm.conf in a
fresh temporary folder, on free ports, so it never meets a site's Slurm or a cluster left
behind by an earlier run. Clients find it through ``SLURM_CONF``. At the end of the
session it cancels every job, stops the daemons and removes the folder.

It skips only when Slurm cannot be had at all (not root, no apt-get, apt-get failed).
Anything else that goes wrong fails with the daemons' logs in the message, and every wait
has a timeout.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo")
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
ROOT_PREFIX = "mpi_dml_slurm_"
# Job states after which a job will not run again (REQUEUED and PENDING are not here).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
# Jobs share the node's few cores: one thread per rank.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

TIMINGS: dict[str, float] = {}


def which(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + os.pathsep + SBIN_PATH)


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if which(p) is None]


def install_slurm(timeout: float = 900) -> str | None:
    """Install Slurm and munge from Debian when missing; the reason to skip, or None."""
    missing = missing_programs()
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"Slurm is not installed ({', '.join(missing)} missing) and we are not root"
    if which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing)} missing) and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=120", *PACKAGES]
    start = time.monotonic()
    try:
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode != 0:  # a fresh image may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env,
                           timeout=timeout)
            done = subprocess.run(install, capture_output=True, text=True, env=env,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"apt-get did not finish installing {' '.join(PACKAGES)} in {timeout:.0f} s"
    TIMINGS["apt-get install"] = time.monotonic() - start
    if done.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    if missing_programs():
        return f"apt-get installed Slurm but {', '.join(missing_programs())} are still missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def remove_stale_clusters(base: Path):
    """Stop daemons and remove folders that a killed earlier session left behind."""
    for folder in base.glob(ROOT_PREFIX + "*"):
        pids = folder / "daemons.pid"
        if pids.exists():
            for pid in map(int, pids.read_text().split()):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(folder).encode() in cmdline:  # still ours, not a reused pid
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def node_line(slurmd: str, host: str) -> str:
    """The node as ``slurmd -C`` sees it, with RealMemory a little under what it reports."""
    found = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30)
    line = found.stdout.splitlines()[0] if found.returncode == 0 and found.stdout else ""
    if not line.startswith("NodeName="):
        return f"NodeName={host} CPUs={os.cpu_count()} RealMemory=1000"
    line = re.sub(r"NodeName=\S+", f"NodeName={host}", line)
    memory = re.search(r"RealMemory=(\d+)", line)
    if memory:
        line = line.replace(memory.group(0), f"RealMemory={max(100, int(memory.group(1)) * 9 // 10)}")
    return line


SLURM_CONF = """\
ClusterName=mpidmltest
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
KillWait=5
MinJobAge=600
FirstJobId={first_job_id}
InactiveLimit=0
{node}
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """One slurmctld and one slurmd on this host, with munged, all in ``root``."""

    final_states = FINAL_STATES

    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname()
        self.conf = root / "slurm.conf"
        self.munge_dir = root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.daemons: dict[str, subprocess.Popen] = {}
        # MPICH names its shared memory after the job and step (through PMI) and leaves
        # it behind when a job dies: job ids that restart at 1 with every new cluster
        # would meet the leftovers of an earlier cluster's job of the same id.
        self.first_job_id = int(os.environ.get("MPI_DML_SLURM_FIRST_JOB_ID", 0)) or \
            secrets.randbelow(60_000_000) + 1000

    # -- start and stop --------------------------------------------------------------

    def start(self, timeout: float = 90):
        started = time.monotonic()
        for folder in ("state", "spool"):
            (self.root / folder).mkdir()
        self.conf.write_text(SLURM_CONF.format(
            host=self.host, root=self.root, ctld_port=free_port(), slurmd_port=free_port(),
            munge_socket=self.munge_socket, node=node_line(which("slurmd"), self.host),
            first_job_id=self.first_job_id))
        self.start_munged(timeout)
        self.spawn("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
        self.wait_until(lambda: self.run("scontrol", "ping", check=False).returncode == 0,
                        "slurmctld answers scontrol ping", timeout)
        self.spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf)])
        self.wait_until(self.node_idle, f"sinfo shows node {self.host} idle", timeout)
        TIMINGS["cluster start"] = time.monotonic() - started

    def start_munged(self, timeout: float):
        import pwd

        user = pwd.getpwnam("munge")
        self.munge_dir.mkdir()
        self.munge_dir.chmod(0o711)  # munged wants its socket folder searchable by all
        key = self.munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for path in (self.munge_dir, key):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.spawn("munged", [
            which("munged"), "--foreground", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={self.munge_dir / 'munged.pid'}",
            f"--log-file={self.munge_dir / 'munged.log'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}"],
            user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        self.wait_until(self.munge_dir.joinpath("munge.socket").exists,
                        "munged creates its socket", timeout)

    def spawn(self, name: str, argv: list, **kw):
        log = open(self.root / f"{name}.out", "wb")
        self.daemons[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=self.env(),
                                              start_new_session=True, **kw)
        log.close()
        with open(self.root / "daemons.pid", "a") as pids:
            pids.write(f"{self.daemons[name].pid}\n")

    def stop(self, timeout: float = 30):
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.run("scancel", "--quiet", "--partition=test", check=False)
            try:
                self.wait_until(lambda: not self.run("squeue", "-h", check=False).stdout.strip(),
                                "every job has left the queue", timeout)
            except AssertionError:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    # -- running clients -------------------------------------------------------------

    def env(self, extra: dict | None = None) -> dict:
        """The environment for clients and jobs: this cluster, one thread per rank."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_",
                                                                        "SALLOC_", "SRUN_"))}
        env["PATH"] = env.get("PATH", "") + os.pathsep + SBIN_PATH
        env["SLURM_CONF"] = str(self.conf)
        env.update(ONE_THREAD)
        env.update(extra or {})
        return env

    def run(self, *argv, timeout: float = 60, check: bool = True, env: dict | None = None,
            cwd=None) -> subprocess.CompletedProcess:
        """Run a client command (``scontrol``, ``srun``...) against this cluster."""
        try:
            done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                                  timeout=timeout, env=self.env(env), cwd=cwd,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{' '.join(map(str, argv))} still running after {timeout} s\n"
                                 f"{e.stdout or ''}{e.stderr or ''}\n{self.logs()}") from None
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n"
                                 f"{done.stdout}{done.stderr}\n{self.logs()}")
        return done

    def sbatch(self, script, *args, options=(), export: dict | None = None, cwd=None) -> str:
        """Submit ``script ARGS`` and return the job id; ``export`` goes in --export=ALL,..."""
        export = {k: str(v) for k, v in (export or {}).items()}
        assert not any("," in v for v in export.values()), export  # --export splits on commas
        spec = ",".join(["ALL", *(f"{k}={v}" for k, v in export.items())])
        done = self.run("sbatch", "--parsable", f"--export={spec}", *options, script, *args,
                        cwd=cwd)
        return done.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict]:
        """``scontrol show job`` as one dict per job (an array gives one per task)."""
        done = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        jobs = []
        for line in done.stdout.splitlines():
            # Values may contain spaces (Command=, WorkDir=); keys are single words.
            pairs = re.findall(r"(\w[\w:/]*)=(.*?)(?= \w[\w:/]*=|$)", line.strip())
            jobs.append(dict(pairs))
        return jobs

    def wait_for_states(self, job_id: str, states, timeout: float, count: int = 1) -> list[dict]:
        """Wait until ``count`` jobs under ``job_id`` are all in one of ``states``."""
        states = set(states)
        found: list[dict] = []

        def reached():
            found[:] = self.jobs(job_id)
            return len(found) >= count and all(j.get("JobState") in states for j in found)

        self.wait_until(reached, f"job {job_id} reaches {sorted(states)} (now {found})", timeout)
        return found

    def wait_done(self, job_id: str, timeout: float = 120, count: int = 1) -> list[dict]:
        return self.wait_for_states(job_id, FINAL_STATES, timeout, count)

    def step_daemons(self, job_id: str) -> list[int]:
        """PIDs of the slurmstepd processes still serving ``job_id`` (its batch and steps)."""
        title = f"slurmstepd: [{job_id}.".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title):
                    pids.append(int(entry.name))
            except OSError:  # the process ended while we looked
                continue
        return pids

    def wait_step_daemons_gone(self, job_id: str, timeout: float = 60):
        self.wait_until(lambda: not self.step_daemons(job_id),
                        f"the slurmstepd processes of job {job_id} have exited", timeout)

    def node_idle(self) -> bool:
        done = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        return done.returncode == 0 and f"{self.host} idle" in done.stdout

    def wait_until(self, condition, what: str, timeout: float, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            for name, process in self.daemons.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited ({process.returncode}) while waiting "
                                         f"until {what}\n{self.logs()}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting until {what}\n{self.logs()}")

    def logs(self, tail: int = 40) -> str:
        """The last lines of every daemon log, for failure messages."""
        parts = []
        for path in sorted([*self.root.glob("*.log"), *self.root.glob("*.out"),
                            *self.munge_dir.glob("*.log")]):
            try:
                lines = path.read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                continue
            parts.append(f"--- {path.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)


def start_cluster() -> SlurmCluster:
    """Install if needed and start a cluster; skips only when Slurm cannot be had."""
    reason = install_slurm()
    if not reason and os.geteuid() != 0:
        reason = "starting munged, slurmctld and slurmd by hand needs root"
    if reason:
        # CI runs as root on Debian: there, a Slurm that cannot be had is a failure.
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(reason)
    base = Path(tempfile.gettempdir())
    remove_stale_clusters(base)
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=base))
    root.chmod(0o755)  # munged runs as the munge user and must reach its folder
    cluster = SlurmCluster(root)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node Slurm; submit with ``slurm_cluster.sbatch(...)``."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"slurm: {times}")


if __name__ == "__main__":  # bring a cluster up and down by hand, to debug the harness
    c = start_cluster()
    print(c.run("sinfo").stdout, TIMINGS, file=sys.stderr)
    c.stop()
    shutil.rmtree(c.root, ignore_errors=True)
