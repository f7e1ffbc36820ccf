#!/usr/bin/env bash
# Creates the virtual environment .venv/ in the repo root with the pinned stack (pyproject.toml) and
# installs this package into it, with the test and baselines (overcomplete) extras. Does nothing when .venv/
# is already set up for this pyproject.toml.
# With --test, also installs what the test suite needs outside Python: Debian's SLURM and munge
# packages for the real-SLURM test (tests/test_slurm.py) and Debian's chromium for the report's
# headless-browser test (tests/test_report_browser.py), when they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--test" ]; then
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
     || ! command -v sbatch >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing slurmctld slurmd slurm-client munge (Debian packages) for the SLURM test ..." >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    else
      echo "warning: the SLURM test needs Debian's slurmctld slurmd slurm-client munge and root;" \
           "install them (apt-get install slurmctld slurmd slurm-client munge) or that test fails" >&2
    fi
  fi
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing chromium (Debian package) for the report's headless-browser test ..." >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "warning: the report's browser test needs Debian's chromium (apt-get install chromium) and is" \
           "skipped without it" >&2
    fi
  fi
fi
stamp=.venv/.elude-setup
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (pinned torch/timm/snakemake/zarr/hdbscan stack; a few minutes) ..." >&2
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,baselines]'
echo "$want" > "$stamp"
