"""The input-key format: an artifact's ``inputs`` name what it reads: the stage's name where it reads one artifact
of that stage, "<kind>-<qualifier>[-<qualifier>]" where it reads several (``judge-<seed>-<k>``,
``evaluate-<variant>-<seed>``). The names are part of every id, so their format never changes; these functions
are the one place that writes and reads it (:mod:`.plan` writes, rules/common.smk and the stages decode;
tests/test_plan.py round-trips)."""
from __future__ import annotations

def input_key(kind: str, *qualifiers) -> str:
    """The name of one input of several of a kind: "<kind>-<q1>-<q2>..."."""
    return "-".join([kind, *map(str, qualifiers)])


def split_key(qualifier: str, parts: int = 2) -> tuple[str, ...]:
    """A qualifier "<q1>-...-<qn>" split into its ``parts`` (the first may hold '-')."""
    return tuple(qualifier.rsplit("-", parts - 1))


def qualified(inputs: dict[str, str], kind: str, parts: int = 1) -> dict:
    """The inputs named "<kind>-<qualifiers>": {qualifier: id}, or with ``parts`` > 1 {(q1, ..., qn): id}. The
    first qualifier may itself hold '-' (an ablation variant's name); the others (seeds, EFs, counters) do not."""
    prefix = kind + "-"
    out = {}
    for key, i in inputs.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            out[rest if parts == 1 else split_key(rest, parts)] = i
    return out


def dictionary_runs(inputs: dict[str, str]) -> tuple[list[str], dict[str, list[str]]]:
    """Table 4's runs (:func:`elude.pipeline.plan.study_artifacts`): ELUDe's merge ids ("merge-<run>"), each family's model ids
    ("<family>-<init seed>")."""
    merges = list(qualified(inputs, "merge").values())
    families: dict[str, list[str]] = {}
    for key, i in inputs.items():
        if not key.startswith("merge-"):
            families.setdefault(key.rsplit("-", 1)[0], []).append(i)
    return merges, families


def rank_runs(inputs: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A rank artifact's inputs (:func:`elude.pipeline.plan.judge_artifacts`): token seed -> grids id, token seed -> judge ids."""
    grids = qualified(inputs, "grids")
    judges: dict[str, list[str]] = {seed: [] for seed in grids}
    for (seed, _), i in qualified(inputs, "judge", 2).items():
        judges[seed].append(i)
    return grids, judges


def ablation_runs(inputs: dict[str, str], kind: str = "evaluate") -> dict[str, dict[str, str]]:
    """An ablation artifact's inputs (:func:`elude.pipeline.plan.ablation_artifacts`): variant ("base" first) -> token seed ->
    evaluate id; with ``kind`` "verify", the same for the variants that change the surgery."""
    out: dict[str, dict[str, str]] = {}
    for (name, seed), i in qualified(inputs, kind, 2).items():
        out.setdefault(name, {})[seed] = i
    return out


EF_SWEEP_KINDS = ("evaluate", "ef_search", "baseline_eval", "rank")
REPORT_STUDIES = ("dictionary", "efficiency", "rank", "ablation", "ef_sweep", "labels", "explanations")  # a report's study inputs


def ef_sweep_runs(inputs: dict[str, str]) -> dict[str, dict]:
    """An ef_sweep artifact's inputs (:func:`elude.pipeline.plan.ef_sweep_artifacts`): {"evaluate" | "ef_search": {(target, seed):
    id}, "baseline_eval": {(family, target, seed): id}, "rank": {target: id}}, targets as "%g" strings."""
    parts = {"evaluate": 2, "ef_search": 2, "baseline_eval": 3, "rank": 1}
    return {kind: found for kind in EF_SWEEP_KINDS if (found := qualified(inputs, kind, parts[kind]))}
