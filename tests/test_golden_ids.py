"""The artifact ids of the default config and of two paper configs, pinned (issue 24): moving code must not
change a user's results, and an id that changes reruns everything below it. A deliberate change of a stage's
output bumps its entry in CODE_VERSIONS and rewrites tests/golden/ids.json (``python tests/test_golden_ids.py --write``)."""
import json
import sys
from pathlib import Path

import pytest

from elude.pipeline.config import resolve_config
from elude.pipeline.plan import all_ids

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden") / "ids.json"
CONFIGS = ["config.yaml", "configs/dinov2-b14-l12.yaml", "configs/augreg-vit-b16-l12.yaml"]


def ids_of(name: str) -> dict[str, list[str]]:
    """As the workflow resolves ``snakemake`` (config.yaml, the demo) and ``snakemake --configfile <name>``."""
    cfg = resolve_config([] if name == "config.yaml" else [REPO / name])
    return {stage: sorted(ids) for stage, ids in sorted(all_ids(cfg).items())}


@pytest.mark.parametrize("name", CONFIGS)
def test_artifact_ids_are_pinned(name):
    golden = json.loads(GOLDEN.read_text())[name]
    assert ids_of(name) == golden


if __name__ == "__main__":  # rewrite the golden file after a deliberate CODE_VERSIONS bump
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden_ids.py --write  (after a deliberate CODE_VERSIONS bump)")
    GOLDEN.write_text(json.dumps({n: ids_of(n) for n in CONFIGS}, indent=1) + "\n")
