"""``python -m elude.doctor``: the checks on this machine, for the demo and for a user config that cannot run."""
import shutil
import subprocess
import sys

import torch
import yaml
from workflow_helpers import REPO


def doctor(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elude.doctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def lines(out: str) -> dict[str, tuple[str, str]]:
    """topic -> (status, text)."""
    return {parts[1]: (parts[0], parts[2]) for line in out.splitlines() if len(parts := line.split(None, 2)) == 3
            and parts[0] in ("ok", "warn", "FAIL")}


def test_the_demo_passes_with_its_shape_size_and_jobs(tmp_path):
    """The demo on this machine: nothing fails; the layer, the instances and the job count are the ones the
    default run has (64 units x 256 inputs, 17 tokens x 1,257 probe images = 21,369 instances, 63 jobs:
    bench/default_run.py on a finished default run)."""
    proc = doctor(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = lines(proc.stdout)
    assert found["layer"] == ("ok", "blocks.3.mlp.fc2: 64 units x 256 inputs, 17 instances per image")
    assert found["data"] == ("ok", "data.kind digits: 1257 probe images, 540 evaluation images")
    assert "21,369 instances x 256 inputs" in found["disk"][1]
    assert found["jobs"][1].startswith("about 63 jobs: ")
    assert found["clustering"][1].startswith("cluster.backend 'auto' runs as torch:")
    assert "nothing here stops the run" in proc.stdout


def test_a_config_that_cannot_run_fails_naming_each_key(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({
        "backbone": {"kind": "timm", "layer": "blocks.0.mlp.fc9",
                     "timm": {"name": "vit_tiny_patch16_224", "weights": str(tmp_path / "missing.pth")}},
        "data": {"kind": "imagefolder", "probe_dir": str(tmp_path / "no-probe"), "eval_dir": str(tmp_path / "no-eval")},
        "cluster": {"backend": "cuml"}, "compute": {"device": "cuda"}}))
    proc = doctor(tmp_path, "--configfile", str(mine))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = lines(proc.stdout)
    assert found["config"][0] == "ok" and "'mine'" in found["config"][1]
    assert found["models"] == ("FAIL", f"backbone.timm.weights: {tmp_path}/missing.pth does not exist")
    assert found["data"][0] == "FAIL" and "data.probe_dir" in found["data"][1]
    assert found["layer"][0] == "FAIL" and "blocks.0.mlp.fc9" in found["layer"][1]
    if not torch.cuda.is_available():
        assert found["clustering"][0] == "FAIL" and "cuml" in found["clustering"][1]
        # no GPU here: a login node with sbatch may still run it on SLURM (warn), else the run would stop
        assert found["device"][0] == ("warn" if shutil.which("sbatch", path="/usr/bin:/bin") else "FAIL")
    assert proc.stdout.rstrip().splitlines()[-1].startswith("FAIL: ")
