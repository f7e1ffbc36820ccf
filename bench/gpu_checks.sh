#!/usr/bin/env bash
# Issue 29's GPU rows (docs/performance.md) in one call on a lent GPU machine, prepared so that a session with
# a GPU spends its device time measuring, not setting up. Here (a machine with git and package registries):
#     bash bench/gpu_checks.sh --prepare
# puts the wheels the GPU machine's Python lacks in .whl/ and e61c9f0's elude/ (the baseline of the side-by-side
# ladder; that machine has no git history) in .baseline/e61c9f0/, both git-ignored. Then, through the device tool:
#     run(command="bash bench/gpu_checks.sh", carry=[".whl", ".baseline"], timeout_s=590)
# Every step has its own time limit and writes under $OUT, so one that runs long leaves the others' results:
# the --paper ladder (400k x 3072 against the 20 s target; e61c9f0 side by side up to 100k; then
# 100k and 400k with a float32 screen, what GPUs with slow float64 choose), Table 5's dense and
# lazy layer at ViT-B size (batch 256, EF 8; no SAE rows: that machine has no overcomplete), and the
# held-out exactness cases with their CUDA column (--quick: n <= 2,000). The default run on a GPU machine
# (bench/default_run.py --fresh --device cuda --cores 16) does not fit the same 15 minutes:
# bench/gpu_default_run.sh prepares it for a call of its own.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
    for d in /.whl/ /.baseline/; do grep -qxsF "$d" "$exclude" || echo "$d" >> "$exclude"; done
    rm -rf .baseline/e61c9f0 && mkdir -p .baseline/e61c9f0 && git archive e61c9f0 elude | tar -x -C .baseline/e61c9f0
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        hdbscan==0.8.44 zarr==3.1.6 numcodecs==0.16.6 donfig google-crc32c
    exit
fi
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } > "$OUT/machine.txt" 2>&1
timeout 345 python3 bench/cluster_scale.py --paper --baseline-rev .baseline/e61c9f0 --baseline-max-n 100000 \
    --json "$OUT/paper.json" > "$OUT/paper.log" 2>&1
echo "paper ladder: exit $?" >> "$OUT/machine.txt"
timeout 60 python3 bench/cluster_scale.py --paper --screen float32 --rungs 100000 400000 \
    --json "$OUT/paper_float32.json" > "$OUT/paper_float32.log" 2>&1
echo "paper ladder, float32 screen: exit $?" >> "$OUT/machine.txt"
timeout 90 python3 bench/efficiency.py --vit-b --families none --device cuda > "$OUT/efficiency.log" 2>&1
echo "efficiency: exit $?" >> "$OUT/machine.txt"
timeout 75 python3 bench/cluster_exactness.py --quick > "$OUT/exactness.log" 2>&1
echo "exactness: exit $?" >> "$OUT/machine.txt"
tail -n 12 "$OUT/machine.txt" "$OUT/paper.log" "$OUT/paper_float32.log" "$OUT/efficiency.log" \
    "$OUT/exactness.log"
