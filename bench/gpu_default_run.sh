#!/usr/bin/env bash
# Issue 29's point 7 in one call on a lent GPU machine: the README's default run with compute.device cuda on its
# 16 cores (bench/default_run.py --fresh --device cuda --cores 16: per stage the jobs' wall, CPU and start-up
# seconds, and the run's span), against the same command's 2-core CPU figure measured beside the code
# (docs/performance.md). That machine's Python has torch, timm, transformers' dependencies, matplotlib and
# scikit-image but not Snakemake, zarr or overcomplete, and reaches no package registry. Here first:
#     bash bench/gpu_default_run.sh --prepare
# puts in .whl-run/ (git-ignored) the wheels it lacks, at the versions pyproject.toml pins (Python 3.12): Snakemake
# and its dependencies, zarr and numcodecs, overcomplete with matplotlib < 3.9 (it imports only with those),
# transformers at our pin (the machine's is older) with the regex it checks for at import, and pulp (so that
# Snakemake schedules as it does here); 61 MiB, under the device tool's 64 MiB with the working tree. Not hdbscan:
# the default run clusters with the exact torch backend. Then, through the device tool (one call of its
# own: with bench/gpu_checks.sh it would not fit one session's 15 minutes):
#     run(command="bash bench/gpu_default_run.sh", carry=[".whl-run"], timeout_s=590)
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(annotated-types==0.8.0 argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.9.0
        connection-pool==0.0.3 docutils==0.22.4 donfig==0.8.1.post1 dpath==2.2.0 fastjsonschema==2.22.3
        gitdb==4.0.12 gitpython==3.2.1 google-crc32c==1.9.0 greenlet==3.5.6 httpcore2==2.17.0 httpx2==2.17.0
        humanfriendly==10.0 immutables==0.21 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
        jupyter-core==5.9.1 nbformat==5.11.1 numcodecs==0.16.6 overcomplete==0.3.0 platformdirs==4.14.9 pulp==3.3.2
        pydantic==2.14.4 pydantic-core==2.50.5 referencing==0.37.0 rpds-py==2026.9.1 smart-open==7.7.1 smmap==5.0.3
        snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
        snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
        snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1
        sqlalchemy==2.0.58 sqlmodel==0.0.37 tenacity==9.2.1 throttler==1.2.3 traitlets==5.16.1 truststore==0.10.5
        typing-inspection==0.4.5 tzdata==2026.6 yte==1.9.4 zarr==3.1.6 matplotlib==3.8.4 transformers==5.24.0 regex==2026.12.2)
if [ "${1:-}" = "--prepare" ]; then
    exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
    grep -qxsF /.whl-run/ "$exclude" || echo /.whl-run/ >> "$exclude"
    # the packages pyproject.toml pins must be carried at its versions: refuse a list that drifted from it
    python3 - "${WHEELS[@]}" <<'PY' || exit 1
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
split = lambda pin: (re.sub(r"[-_.]+", "-", pin.split("==")[0].strip()).lower(), pin.split("==")[1].split(";")[0].strip())
pins = dict(split(p) for p in project["dependencies"] + project["optional-dependencies"]["baselines"] if "==" in p)
drift = [w for w in sys.argv[1:] if split(w)[0] in pins and pins[split(w)[0]] != split(w)[1]]
if drift:
    sys.exit(f"bench/gpu_default_run.sh: WHEELS differ from pyproject.toml's pins: {drift}")
PY
    rm -rf .whl-run && mkdir -p .whl-run
    for w in "${WHEELS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .whl-run "$w" 2>/dev/null \
            || python3 -m pip wheel -q --no-deps -w .whl-run "$w" \
            || { echo "no wheel for $w" >&2; exit 1; }  # a pure-Python sdist (connection-pool) is built here
    done
    du -sh .whl-run  # with the working tree it must stay under the device tool's 64 MiB
    exit
fi
OUT=${OUT:-gpu-default-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-run/*.whl \
    && export PYTHONPATH=/tmp/site
{ nvidia-smi; nproc; python3 -c "import torch, snakemake, overcomplete; print(torch.__version__, torch.cuda.get_device_name())"
} > "$OUT/machine.txt" 2>&1
timeout 555 python3 bench/default_run.py --fresh --device cuda --cores 16 > "$OUT/default_run_cuda.log" 2>&1
status=$?
echo "default run on the GPU: exit $status" >> "$OUT/machine.txt"
if [ "$status" != 0 ]; then  # stopped or failed: what its finished jobs took, from the folder it ran in
    dir=$(sed -n 's/^working folder: //p' "$OUT/default_run_cuda.log")
    [ -n "$dir" ] && timeout 20 python3 bench/default_run.py --run "$dir" > "$OUT/default_run_partial.log" 2>&1
fi
tail -n 40 "$OUT/machine.txt" "$OUT"/default_run_*.log
