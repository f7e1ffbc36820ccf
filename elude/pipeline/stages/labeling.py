"""Workflow stage of the concept labels (CLIP-Dissect, Sec. C.3) and concept groups (Sec. 4.2) of one token
seed's disentangled layer."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ...method.layers import DisentangledLayer
from ...models.data import image_reader
from ...util.files import load_arrays
from .job import Stage, dataset, model_job

log = logging.getLogger(__name__)

LARGEST_GROUPS = 10  # groups listed in labels.json and the report
CLIP_IMAGE_SIDE = 512  # images handed to the CLIP processor (it resizes to its own resolution)


def clip_model(spec: str, concepts: list[str], data: dict, backbone_dir: str, folder: Path, device: str):
    """The run's CLIP-like model; ``demo:<seed>`` is trained here (on the probe split) into ``folder``."""
    from ...demo.clip import build_demo_clip
    from ...evaluation.labels import load_clip
    from ...models import demo_seed

    seed = demo_seed(spec)
    if seed is not None:
        probe = dataset(data, "probe", backbone_dir)
        images = np.stack([probe.thumbnail(i) for i in range(len(probe))])
        build_demo_clip(folder, concepts, images, probe.labels.numpy(), seed=seed)
        spec = str(folder)
    return load_clip(spec, device)


def labels(st: Stage, backbone_dir: str, merge_dir: str, evaluate_dir: str, out: str) -> None:
    """labels.json (per unit and sub-unit: label, soft-WPMI score, alternatives, concept group; the groups'
    summary), labels.csv (one row per unit and sub-unit, with K and MS-Score) and, for the demo CLIP, its
    model folder ``clip/`` (steering embeds concepts with it)."""
    from ...evaluation.groups import concept_groups, per_image_max
    from ...evaluation.labels import label_features, load_concepts

    p = st.params
    job = model_job(p, backbone_dir, "eval")
    device, ev = job.device, job.data
    layer = DisentangledLayer.load(merge_dir)
    image = image_reader(ev, CLIP_IMAGE_SIDE, "labels (labels.model)")
    concepts = load_concepts(p["concepts"])
    acts = per_image_max(job.model, job.info["path"], layer, ev, p["layer_batch_size"], st.runtime.get("workers", 0))
    parent = layer.parent.numpy()
    groups = concept_groups(acts["subunits"], parent, p["group_threshold"])
    tables = load_arrays(Path(evaluate_dir) / "tables.safetensors")
    with st.publish(out) as (tmp, _):
        clip = clip_model(p["model"], concepts, p["data"], backbone_dir, tmp / "clip", device)
        res = label_features({"units": acts["units"], "subunits": acts["subunits"]}, image, clip, concepts,
                             top_k=p["top_k"], a=p["softmax_scale"], lam=p["lam"], p_start=p["p_start"],
                             p_end=p["p_end"], alternatives=p["alternatives"], batch_size=p["batch_size"])
        doc = labels_doc(res, groups, parent, p, len(concepts), int(min(p["top_k"], len(ev))))
        (tmp / "labels.json").write_text(json.dumps(doc, indent=2))
        labels_table(doc, tables).to_csv(tmp / "labels.csv", index=False)
    log.info("labels: %d of %d sub-units labelled; %d concept groups", sum(s["label"] is not None for s in doc["subunits"]),
             len(doc["subunits"]), groups["n_groups"])


def labels_doc(res: dict, groups: dict, parent: np.ndarray, p: dict, n_concepts: int, top_k: int) -> dict:
    def entry(lab):
        return {"label": None, "score": None, "alternatives": []} if lab is None else lab

    group = groups["group"]
    subunits = [{"subunit": s, "unit": int(parent[s]), **entry(lab), "group": int(group[s]) if group[s] >= 0 else None}
                for s, lab in enumerate(res["subunits"])]
    largest = []
    for g in range(min(LARGEST_GROUPS, groups["n_groups"])):
        members = [int(s) for s in np.nonzero(group == g)[0]]
        names = [subunits[s]["label"] for s in members if subunits[s]["label"] is not None]
        corr = groups["mean_corr"][g]
        largest.append({"group": g, "size": len(members), "n_units": int(len(np.unique(parent[members]))),
                        "members": members, "labels": dict(sorted({n: names.count(n) for n in names}.items(),
                                                                  key=lambda kv: (-kv[1], kv[0]))),
                        "mean_corr": None if np.isnan(corr) else corr})
    return {"model": p["model"], "concepts": p["concepts"] or "default", "n_concepts": n_concepts, "top_k": top_k,
            "units": [{"unit": u, **entry(lab)} for u, lab in enumerate(res["units"])],
            "subunits": subunits,
            "groups": {"threshold": p["group_threshold"],
                       **{k: groups[k] for k in ("n_active_subunits", "n_groups", "n_multi_unit_groups")},
                       "largest": largest}}


def labels_table(doc: dict, tables: dict):
    """One row per unit and sub-unit: its label, score, runners-up, concept group, K and MS-Score."""
    import pandas as pd

    k = tables["k_per_unit"]
    rows = []
    for kind, items in (("unit", doc["units"]), ("subunit", doc["subunits"])):
        for it in items:
            i = it[kind]
            unit = it.get("unit", i)
            alts = {f"label_{j + 1}": a[0] for j, a in enumerate(it["alternatives"][1:3], start=1)}
            rows.append({"kind": kind, "id": i, "unit": unit, "k_of_unit": int(k[unit]), "label": it["label"],
                         "score": it["score"], **alts, "group": it.get("group"),
                         "ms_score": float(tables[f"{kind}s_ms_layer"][i]),
                         "ms_score_pooled": float(tables[f"{kind}s_ms_pooled"][i])})
    return pd.DataFrame(rows)


# --- explanations (text runs) ---------------------------------------------------------------------------------
def make_llm(model: str, backend: str, device: str, batch_size: int, tensor_parallel_size: int, folder):
    """The configured text LLM (explanations, LLM Rank on texts); ``demo:<seed>``: the tiny random one, built
    into ``folder`` first."""
    from ...evaluation.explanations import TransformersLLM, VllmLLM
    from ...models import demo_seed

    if demo_seed(model) is not None:
        from ...demo.lm import build_demo_explainer

        model = str(build_demo_explainer(folder, demo_seed(model)))
    if backend == "vllm":
        return VllmLLM(model, tensor_parallel_size=tensor_parallel_size)
    return TransformersLLM(model, device, batch_size)


def explanations(st: Stage, backbone_dir: str, evaluate_dir: str, out: str,
                 baseline_dirs: dict[str, str] | None = None) -> None:
    """explanations.json: per feature of the original units, ELUDe's sub-units and each baseline family
    (``baseline_dirs``: family -> its baseline_eval artifact), an LLM's explanation from its top texts and the
    detection score of that explanation (:mod:`elude.evaluation.explanations`), and each kind's mean (Table 2's
    detection column); the demo LM, where it is the explainer, is saved in ``explainer/``."""
    from ...evaluation.explanations import explain_features, marked
    from ...models.backbones import resolve_device

    p = st.params
    ds = dataset(p["data"], "eval", backbone_dir)
    if not hasattr(ds, "tokens"):
        raise ValueError("explain.model: explanations read the features' top texts: set data.kind text")
    tables = load_arrays(Path(evaluate_dir) / "tables.safetensors")
    sources = {kind: (tables, kind) for kind in ("units", "subunits")}
    sources.update({family: (load_arrays(Path(d) / "tables.safetensors"), "features")
                    for family, d in sorted((baseline_dirs or {}).items())})
    rng = np.random.default_rng(p["seed"])
    features, contexts, held_out, negatives = [], [], [], []
    for kind, (tab, name) in sources.items():
        top, acts = tab[f"{name}_top_images"], tab[f"{name}_top_contexts"]
        shown = min(p["contexts"], acts.shape[1])
        for f in range(len(top)):
            ctx = [m for i, a in zip(top[f][:shown], acts[f][:shown]) if (m := marked(ds.tokens(int(i)), a))]
            if not ctx:  # never active on the evaluation texts: nothing to explain
                continue
            pool = np.setdiff1d(np.arange(len(ds)), top[f])
            features.append((kind, f))
            contexts.append(ctx)
            held_out.append([ds.texts[int(i)] for i in top[f][shown : shown + p["positives"]]])
            negatives.append([ds.texts[int(i)] for i in rng.choice(pool, min(p["negatives"], len(pool)), replace=False)])
    with st.publish(out) as (tmp, _):
        llm = make_llm(p["model"], p["backend"], str(resolve_device(p["device"])), p["batch_size"],
                       p["tensor_parallel_size"], tmp / "explainer")
        res = explain_features(llm, contexts, held_out, negatives, p["max_tokens"])
        kinds: dict[str, dict] = {kind: {} for kind in sources}
        for (kind, f), r in zip(features, res):
            kinds[kind][str(f)] = r
        scores = {kind: [r["detection"] for r in rs.values() if r["detection"] is not None] for kind, rs in kinds.items()}
        doc = {"model": p["model"], "backend": p["backend"], "contexts": p["contexts"], "positives": p["positives"],
               "negatives": p["negatives"], "n_explained": {kind: len(rs) for kind, rs in kinds.items()},
               "detection_mean": {kind: float(np.mean(v)) if v else None for kind, v in scores.items()}, "kinds": kinds}
        (tmp / "explanations.json").write_text(json.dumps(doc, indent=2))
    log.info("explanations: %s features explained; mean detection AUROC %s", doc["n_explained"], doc["detection_mean"])
