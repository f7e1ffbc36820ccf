"""Workflow stages of the SAE/transcoder baselines (Section E.1): train one grid point, select by eq. 9,
score the selected model by ELUDe's own metrics (:func:`elude.scoring.score_baseline`)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ... import baselines
from .job import Stage, layer_weights, model_job

# torch, the models and the cache are imported by the jobs that train and score: eq. 9's selection needs none

log = logging.getLogger(__name__)
MODEL_FILES = ("model.safetensors", "model.json", "activity.safetensors")


def n_features(params: dict, n_units: int, merge_dir: str | None) -> int:
    """Dictionary size: expansion factor x units, or with ``match`` (and as ``match_live``'s first guess) ELUDe's
    sub-unit count on the same token dataset (its effective expansion factor, Sec. E.6)."""
    if params["expansion_factor"] in baselines.MATCHED:
        return int(json.loads((Path(merge_dir) / "manifest.json").read_text())["n_subunits"])
    return max(1, round(params["expansion_factor"] * n_units))


def baseline_train(st: Stage, cache_dirs: list[str], backbone_dir: str, out: str, select_dir: str | None = None,
                   merge_dir: str | None = None) -> None:
    """Train one family member on the probe instances of one token dataset: a sweep grid point
    (``params["hp"]``), or with ``hp: selected`` the point the family's selection chose (a later token seed,
    or another init seed for Table 4). Writes the model, its training metrics (MSE and L0 on the training
    instances: eq. 9's inputs) and which features fired on them. Resumable per epoch.

    ``expansion_factor: match_live`` (the selected point only; its sweep trains at ``match``): the dictionary
    size whose live features (fired on the training instances) come closest to ELUDe's sub-unit count, searched
    by :func:`elude.baselines.live_match_next` from the sweep model's count, each try a full training of its own
    (resumable: finished tries are kept in the work folder); ``live_match.json`` records the search.
    Memory: :func:`baseline_memory_mb` (streamed; never the whole cache)."""
    import torch

    from ...baselines.models import Baseline
    from ...baselines.train import (
        InstanceStream,
        archetypal_points,
        fit,
        normalisation,
        training_metrics,
    )
    from ...models import backbones
    from ...models import cache as cache_mod
    from ...util.files import load_arrays, save_arrays

    baselines.overcomplete_sae()  # the capability check, before any work
    p = dict(st.params)
    hp = json.loads((Path(select_dir) / "selected.json").read_text())["hp"] if p["hp"] == "selected" else p["hp"]
    device = backbones.resolve_device(p["device"])
    w, b, info = layer_weights(backbone_dir)
    stream = InstanceStream(cache_mod.Cache(cache_dirs), w, b)
    n_feat = n_features(p, info["n_units"], merge_dir)
    live_match = p["expansion_factor"] == "match_live"
    with st.publish(out, resumable=True, hp=hp, n_features=n_feat) as (tmp, manifest):
        norm = normalisation(stream, p["family"] == "transcoder", p.get("standardise", True))
        data_seed = p.get("data_seed", p["init_seed"])  # Table 4's runs vary the initialisation only
        points = (archetypal_points(stream, p["archetypal_points"], data_seed, norm["in_mean"], norm["in_scale"])
                  if p["family"] == "archetypal" else None)

        def train(size: int, folder: Path) -> None:
            """One dictionary of ``size`` features, trained and measured into ``folder`` (resumable per epoch)."""
            torch.manual_seed(p["init_seed"])
            model = Baseline(p, w.shape[1], w.shape[0], size, points, device)
            model.set_normalisation(norm["in_mean"], norm["in_scale"], norm["out_mean"], norm["out_scale"])
            folder.mkdir(exist_ok=True)
            checkpoint = folder / "checkpoint.pt"
            history = fit(model, stream, hp=hp, epochs=p["epochs"], batch_size=p["batch_size"], seed=data_seed,
                          device=device, checkpoint=checkpoint)
            metrics = training_metrics(model, stream, device)
            save_arrays(folder / "activity.safetensors", {"alive": metrics.pop("alive").numpy()})
            log.info("%s %s, %d features: %s", p["family"], hp, size, json.dumps(metrics))
            model.cpu().save(folder)
            (folder / "train.json").write_text(json.dumps({"hp": hp, "metrics": metrics, "history": history}, indent=1))
            checkpoint.unlink()

        if not live_match:
            train(n_feat, tmp)
        else:  # the first try at ELUDe's count: on the first token seed the selection's own model (the same training)
            target, tries, folders, size = n_feat, [], [], n_feat
            while size is not None:
                folder = Path(select_dir) if p.get("first_try") == "selection" and not tries else tmp / f"try-{size}"
                if not (folder / "train.json").exists():
                    train(size, folder)
                tries.append((size, int(load_arrays(folder / "activity.safetensors")["alive"].sum())))
                folders.append(folder)
                size = baselines.live_match_next(target, tries)
            best = baselines.live_match_choice(target, tries)
            for name in MODEL_FILES + ("train.json",):
                shutil.copyfile(folders[best] / name, tmp / name)
            for folder in tmp.glob("try-*"):
                shutil.rmtree(folder)
            (tmp / "live_match.json").write_text(json.dumps(
                {"target": target, "tolerance": baselines.live_match_tolerance(target), "chosen": tries[best][0],
                 "tries": [{"features": n, "live": live} for n, live in tries]}, indent=1))
            manifest["n_features"] = tries[best][0]
        manifest["metrics"] = json.loads((tmp / "train.json").read_text())["metrics"]


def baseline_select(st: Stage, train_dirs: list[str], out: str) -> None:
    """Eq. 9 over one family's sweep on the first token dataset: MSE and L0 (as a fraction of the
    dictionary) min-max normalised within the family; the best point's model is copied here."""
    runs = [json.loads((Path(d) / "train.json").read_text()) for d in train_dirs]
    candidates = [{"hp": r["hp"], "mse": r["metrics"]["mse"], "l0": r["metrics"]["l0_fraction"]} for r in runs]
    best = baselines.select(candidates)
    scores = baselines.selection_scores([c["mse"] for c in candidates], [c["l0"] for c in candidates])
    table = [{**c, "s": s, "train_artifact": Path(d).name} for c, s, d in zip(candidates, scores, train_dirs)]
    with st.publish(out, selected=runs[best]["hp"]) as (tmp, _):
        for name in MODEL_FILES + ("train.json",):
            shutil.copyfile(Path(train_dirs[best]) / name, tmp / name)
        (tmp / "selected.json").write_text(json.dumps({"family": st.params["family"], "hp": runs[best]["hp"],
                                                       "index": best, "candidates": table}, indent=1))
    log.info("%s: selected %s (eq. 9 score %.4f of %d candidates)", st.params["family"], runs[best]["hp"],
             scores[best], len(candidates))


def baseline_eval(st: Stage, model_dir: str, backbone_dir: str, cache_dirs: list[str], out: str) -> None:
    """Score a trained baseline on the evaluation split with ELUDe's metrics, and its live features on the probe
    instances it was trained on (``cache_dirs``). Memory: as ``evaluate``, with the baseline's features in
    place of the sub-units."""
    import numpy as np

    from ...baselines.models import Baseline
    from ...evaluation import scoring
    from ...models import cache as cache_mod
    from ...util.files import save_arrays

    baselines.overcomplete_sae()
    p = st.params
    job = model_job(p, backbone_dir, "eval")
    sae = Baseline.load(model_dir, job.device)
    res = scoring.score_baseline(job.model, job.info["path"], sae, job.data, ms_top_k=p["ms_top_k"],
                                 batch_size=p["batch_size"], workers=st.runtime.get("workers", 0),
                                 accuracy=p["accuracy"], probe=cache_mod.Cache(cache_dirs))
    train = json.loads((Path(model_dir) / "train.json").read_text())
    res["summary"].update({"family": sae.settings["family"], "hp": train["hp"], "training": train["metrics"]})
    log.info("baseline %s: %s", sae.settings["family"],
             json.dumps({k: v for k, v in res["summary"].items() if k != "bad_images_skipped"}))
    with st.publish(out) as (tmp, _):
        (tmp / "metrics.json").write_text(json.dumps(res["summary"], indent=2))
        save_arrays(tmp / "tables.safetensors", {k: np.asarray(v) for k, v in res["tables"].items()})
