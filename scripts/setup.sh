#!/usr/bin/env bash
# Creates the virtual environment .venv/ in the repo root with the pinned stack (pyproject.toml) and
# installs this package into it. Does nothing when .venv/ is already set up for this pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.elude-setup
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (pinned torch/timm/snakemake/zarr/hdbscan stack; a few minutes) ..." >&2
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "$want" > "$stamp"
