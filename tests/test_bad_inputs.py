"""Bad inputs give clear errors (or a recorded, documented fallback), never a half-written artifact."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elude.models import backbones
from elude.pipeline.stages import (
    cache_shard,
    cluster_shard,
    merge,
    surgery_shard,
    topk,
    topk_part,
)
from elude.pipeline.stages.job import Stage

TIMM = {"name": "vit_tiny_patch16_224", "weights": None,
        "kwargs": {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 3, "embed_dim": 16, "depth": 1,
                   "num_heads": 2}}
LAYER = "blocks.0.mlp.fc2"


def make_backbone(folder, silence_unit: int | None = None):
    torch.manual_seed(0)
    model = backbones.build_from_spec({"kind": "timm", **TIMM})
    if silence_unit is not None:
        with torch.no_grad():
            backbones.get_module(model, LAYER).bias[silence_unit] = -1e4  # never activates
    folder.mkdir(parents=True)
    spec = {"kind": "timm", "name": TIMM["name"], "kwargs": TIMM["kwargs"]}
    backbones.save_backbone(model, spec, folder)
    (folder / "layer.json").write_text(json.dumps({"path": LAYER, "type": "Linear", "n_units": 16, "n_upstream": 64}))
    (folder / "preprocess.json").write_text(json.dumps(backbones.native_preprocess(model, spec)))
    return folder


def image_dir(root, n_per_class=6, corrupt=0):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")
    for i in range(corrupt):
        (root / "b" / f"broken{i}.png").write_bytes(b"not a png at all")
    return root


def data_cfg(probe, on_bad_image="fail"):
    return {"kind": "imagefolder", "probe_dir": str(probe), "eval_dir": str(probe), "on_bad_image": on_bad_image}


def cache(data, bb, out):
    """The cache stage as one dataset shard (cache_shard 0 of 1)."""
    st = Stage("cache", "c0ffee000001", {"data": data, "batch_size": 4, "dtype": "float32", "chunk_rows": 16,
                                         "compressor": "lz4-1", "device": "cpu", "tokens_per_image": None, "shards": 1})
    cache_shard(st, 0, bb, out)


def test_corrupt_image_fails_naming_the_file_and_the_policy_key(tmp_path):
    bb = make_backbone(tmp_path / "bb")
    probe = image_dir(tmp_path / "probe", corrupt=1)
    with pytest.raises(ValueError, match=r"broken0\.png.*data\.on_bad_image: skip"):
        cache(data_cfg(probe), str(bb), str(tmp_path / "results/cache/c0ffee000001"))
    assert not (tmp_path / "results/cache/c0ffee000001").exists()


def test_corrupt_images_skipped_and_counted_by_policy(tmp_path):
    bb = make_backbone(tmp_path / "bb")
    probe = image_dir(tmp_path / "probe", corrupt=2)
    out = tmp_path / "results/cache/c0ffee000001"
    cache(data_cfg(probe, "skip"), str(bb), str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.rsplit("/", 1)[1] for p in manifest["bad_images_skipped"]) == ["broken0.png", "broken1.png"]
    assert manifest["n_images"] == 14 and manifest["n_instances"] == 12 * 17  # no instance of a skipped image


def test_empty_probe_set_is_a_clear_error(tmp_path):
    bb = make_backbone(tmp_path / "bb")
    (tmp_path / "empty/a").mkdir(parents=True)
    with pytest.raises(ValueError, match="data.probe_dir: no readable images"):
        cache(data_cfg(tmp_path / "empty"), str(bb), str(tmp_path / "results/cache/x"))
    with pytest.raises(FileNotFoundError, match="data.probe_dir"):
        cache(data_cfg(tmp_path / "missing"), str(bb), str(tmp_path / "results/cache/x"))


def test_never_active_unit_and_clamped_topk_are_recorded(tmp_path):
    """Unit 3's bias keeps it negative on every input: it is left unchanged (K=1) and recorded; a top-k
    larger than the cache is clamped with a warning and recorded; the merged layer is still exact."""
    bb = make_backbone(tmp_path / "bb", silence_unit=3)
    probe = image_dir(tmp_path / "probe", n_per_class=10)
    res = tmp_path / "results"
    cache(data_cfg(probe), str(bb), str(res / "cache/c"))
    topk_part(Stage("topk", "t", {"k": 10_000}), str(res / "cache/c"), str(bb), str(res / "topk/t/part-0000"))
    with pytest.warns(UserWarning, match="clamped to 340"):
        topk(Stage("topk", "t", {"k": 10_000}), [str(res / "topk/t/part-0000")], str(bb), str(res / "topk/t/merged"))
    topk_manifest = json.loads((res / "topk/t/merged/manifest.json").read_text())
    assert topk_manifest["k"] == 340 and topk_manifest["k_clamped"] is True
    cl = {"backend": "hdbscan", "min_cluster_size": 20, "min_samples": 5, "cluster_selection_method": "leaf",
          "units_per_shard": 16}
    cluster_shard(Stage("cluster", "k", cl), 0, [str(res / "cache/c")], str(res / "topk/t/merged"), str(bb), str(res / "cluster/k/shard-0000"))
    shard = json.loads((res / "cluster/k/shard-0000/manifest.json").read_text())
    assert 3 in shard["never_active_units"]  # (a random-init unit may happen to be silent too)
    assert all(shard["n_clusters"][str(u)] == 0 for u in shard["never_active_units"])
    surgery_shard(Stage("surgery", "s", {"rho_grid": [0.5, 1.0]}), str(res / "cluster/k/shard-0000"), [str(res / "cache/c")],
                  str(res / "topk/t/merged"), str(bb), str(res / "surgery/s/shard-0000"))
    merge(Stage("merge", "m", {}), [str(res / "surgery/s/shard-0000")], [str(res / "cluster/k/shard-0000")], str(bb),
          str(res / "merge/m"))
    meta = json.loads((res / "merge/m/layer.json").read_text())["metadata"]["units"]
    assert meta[3]["never_active"] and meta[3]["k"] == 1
    from elude.method.layers import DisentangledLayer

    dl = DisentangledLayer.load(res / "merge/m")
    layer = backbones.get_module(backbones.load_backbone(bb), LAYER)
    x = torch.randn(5, 17, 64)
    assert torch.allclose(dl(x), layer(x), rtol=1e-5, atol=1e-3)
    assert torch.equal(dl.weight[dl.subunits_of(3)[0]], layer.weight[3])


def test_cluster_shard_killed_after_its_last_unit_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    """Found by the fault suite (bench/faults.py): a SIGTERM after the shard's last unit was saved, before the
    shard was published, left every unit done; the rerun has nothing to cluster and must still publish."""
    import elude.pipeline.stages.chain as stages

    bb = make_backbone(tmp_path / "bb")
    res = tmp_path / "results"
    cache(data_cfg(image_dir(tmp_path / "probe", n_per_class=10)), str(bb), str(res / "cache/c"))
    topk_part(Stage("topk", "t", {"k": 60}), str(res / "cache/c"), str(bb), str(res / "topk/t/part-0000"))
    topk(Stage("topk", "t", {"k": 60}), [str(res / "topk/t/part-0000")], str(bb), str(res / "topk/t/merged"))
    st = Stage("cluster", "k", {"backend": "torch", "min_cluster_size": 10, "min_samples": 4,
                                "cluster_selection_method": "leaf", "units_per_shard": 16})

    def run(out):
        cluster_shard(st, 0, [str(res / "cache/c")], str(res / "topk/t/merged"), str(bb), str(out))

    run(res / "cluster/k/uninterrupted")
    real = stages.save_arrays

    def killed_before_publishing(path, arrays):
        if Path(path).name == "clusters.safetensors":
            raise KeyboardInterrupt  # stands for the SIGTERM
        real(path, arrays)

    monkeypatch.setattr(stages, "save_arrays", killed_before_publishing)
    with pytest.raises(KeyboardInterrupt):
        run(res / "cluster/k/shard-0000")
    monkeypatch.setattr(stages, "save_arrays", real)
    run(res / "cluster/k/shard-0000")
    manifest = json.loads((res / "cluster/k/shard-0000/manifest.json").read_text())
    assert manifest["units_resumed"] == 16
    assert manifest["checksum"] == json.loads((res / "cluster/k/uninterrupted/manifest.json").read_text())["checksum"]


def test_a_recorded_run_whose_pid_now_names_another_process_is_not_taken_for_running(tmp_path, monkeypatch):
    """The run record (.snakemake/elude-run.json) names a Snakemake process by pid and start time: once it has
    ended and the kernel gives its pid to another process whose command line says snakemake (a job of another
    run, say), a new invocation here is not refused for it."""
    import subprocess
    import sys

    from elude.pipeline import artifacts

    monkeypatch.chdir(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "snakemake"])
    try:
        artifacts.record_run("mine")
        rec = json.loads(artifacts.RUN_RECORD.read_text())
        artifacts.RUN_RECORD.write_text(json.dumps({**rec, "pid": other.pid}))  # as if it were the recorded run
        assert artifacts.active_run() is None  # same pid, another start time: not the recorded run
        artifacts.RUN_RECORD.write_text(json.dumps({**rec, "pid": other.pid,
                                                    "proc_start": artifacts.process_start(other.pid)}))
        assert artifacts.active_run()["run_name"] == "mine"  # the recorded process itself, alive: refused
    finally:
        other.kill()
        other.wait()
    assert artifacts.active_run() is None  # ended
