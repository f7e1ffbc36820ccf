"""A real single-node SLURM cluster (slurmctld + slurmd + munged) for tests, on this machine.

Needs root and Debian's `slurmctld slurmd slurm-client munge` (22.05). The config must live at
/etc/slurm/slurm.conf: the executor plugin's job step strips SLURM_* variables (SLURM_CONF included)
before its inner srun, so a config elsewhere makes every job fail. An existing slurm.conf is put back
afterwards. State and logs go to a temporary folder, slurmd's spool to a short one of its own (its job steps'
Unix sockets are named there, and a socket's path may not pass 107 bytes); daemons are stopped by PID.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = CONF.with_name("gres.conf")
PARTITIONS = ("cpu", "gpu")  # profiles/slurm/partitions.yaml's names; SLURM's default is "gpu", so a job lands
# on "cpu" only if the plugin chose it from that file (no GPU here: no job needs "gpu")


class SlurmUnavailable(RuntimeError):
    pass


SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path holds 108 with its NUL)
STEP_SOCKET = "localhost_4294967295.4294967295"  # the longest name slurmd gives a job step's socket in its spool


def _conf(tmp: Path, spool: Path, shards_per_gpu: int = 0) -> str:
    # 4 CPUs at least, whatever the machine has (config_overrides lets slurmd accept it): the workflow's jobs
    # are short and mostly start-up, and a 2-core CI machine would otherwise run them two at a time
    cpus = max(4, os.cpu_count() or 2)
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    gres = f" Gres=gpu:1,shard:{shards_per_gpu}" if shards_per_gpu else ""
    return f"""ClusterName=elude-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
{"GresTypes=gpu,shard" if shards_per_gpu else ""}
SlurmdParameters=config_overrides
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={tmp}/state
SlurmdSpoolDir={spool}
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb}{gres} State=UNKNOWN
PartitionName={PARTITIONS[0]} Nodes=localhost Default=NO MaxTime=INFINITE State=UP
PartitionName={PARTITIONS[1]} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _logs(tmp: Path) -> str:
    out = []
    for name in ("munged.log", "slurmctld.log", "slurmd.log"):
        p = tmp / name
        out.append(f"--- {name} ---\n" + (p.read_text()[-3000:] if p.exists() else "(none)"))
    return "\n".join(out)


@contextmanager
def slurm_cluster(tmp: Path, timeout: float = 60.0, shards_per_gpu: int = 0):
    """Start munged, slurmctld and slurmd; yield once `sinfo` shows the node idle; stop them by PID.
    ``shards_per_gpu`` > 0: the node has one GPU, shared as that many ``gres/shard`` (Slurm's sharding); no GPU
    is needed: SLURM only schedules it, on a placeholder device file (a job's CUDA_VISIBLE_DEVICES names it)."""
    for tool in ("slurmctld", "slurmd", "munged", "sbatch", "sinfo", "squeue"):
        if not shutil.which(tool):
            raise SlurmUnavailable(f"{tool} not found: install Debian's slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        raise SlurmUnavailable("the SLURM test cluster needs root (it writes /etc/slurm/slurm.conf)")
    (tmp / "state").mkdir(parents=True, exist_ok=True)
    # not under ``tmp``: with pytest's long folder names a job step's socket path passed the limit once job ids
    # reached two digits, every later launch failed, SLURM held those jobs, and the run waited for them forever
    spool = Path(tempfile.mkdtemp(prefix="slurmd-", dir="/tmp"))  # not $TMPDIR, which may be long too
    assert len(f"{spool}/{STEP_SOCKET}".encode()) <= SOCKET_PATH_MAX, f"{spool}: too long for slurmd's sockets"
    backups = {p: p.read_bytes() if p.exists() else None for p in (CONF, GRES_CONF)}
    procs: list[subprocess.Popen] = []
    try:
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(_conf(tmp, spool, shards_per_gpu))
        if shards_per_gpu:
            device = tmp / "gpu0"  # a character device (/dev/null's numbers); the trailing 0 is the GPU's index
            device.unlink(missing_ok=True)
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            GRES_CONF.write_text(f"AutoDetect=off\nName=gpu File={device}\nName=shard Count={shards_per_gpu} "
                                 f"File={device}\n")
        else:
            GRES_CONF.unlink(missing_ok=True)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
            procs.append(subprocess.Popen(
                ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "/usr/sbin/munged", "-F"],
                stdout=open(tmp / "munged.log", "w"), stderr=subprocess.STDOUT))
            _wait(lambda: subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0,
                  timeout, "munged did not start", tmp)
        procs.append(subprocess.Popen(["slurmctld", "-D"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["slurmd", "-D"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout,
              timeout, "the SLURM node did not become idle", tmp)
        yield tmp
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for path, backup in backups.items():
            if backup is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(backup)
        shutil.rmtree(spool, ignore_errors=True)


def describe(tmp: Path) -> str:
    """The cluster's state: every job with its state and reason, the node's state and reason, the daemons'
    logs (a run that hangs on SLURM: a job held, a node down, a controller gone)."""
    out = []
    for cmd in (["squeue", "--states=all", "-o", "%i %j %T %M %l %R"], ["sinfo", "-N", "-o", "%N %T %E %C %e"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            out.append(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.append(f"$ {' '.join(cmd)}: {exc}")
    return "\n".join(out) + "\n" + _logs(tmp)


def _wait(predicate, timeout: float, what: str, tmp: Path) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.5)
    raise SlurmUnavailable(f"{what} within {timeout:.0f} s\n{_logs(tmp)}")
