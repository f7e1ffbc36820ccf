"""Size and time of the report's unit pages at paper scale (not a test): a synthetic run of ``--units``
units split into ``--subunits`` sub-units, top images drawn from ``--images`` evaluation images shown as
``--side`` px RGB thumbnails (smooth random images, closer to photos than noise), written by
``elude.reporting.pages.write_unit_pages`` as the report stage writes them.

    .venv/bin/python bench/report_pages.py [--units 768] [--subunits 3072] [--images 50000] [--side 64]

Prints one row: pages, images written, MB of pages and of images, seconds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from elude.evaluation.diagnostics import unit_diagnostics  # noqa: E402
from elude.reporting.pages import PARENT_IMAGES, SUBUNIT_IMAGES, write_unit_pages  # noqa: E402


def synthetic(units: int, subunits: int, images: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    parent = np.sort(np.concatenate([np.arange(units), rng.integers(0, units, subunits - units)]))
    k = np.bincount(parent, minlength=units)
    # each unit draws its images from a "concept" pool, so top lists overlap as on real data
    pools = rng.integers(0, images, (units, 200))
    top_u = np.stack([rng.choice(pools[u], PARENT_IMAGES * 4) for u in range(units)])
    top_s = np.stack([rng.choice(pools[p], SUBUNIT_IMAGES * 4) for p in parent])
    ms = rng.random(subunits)
    tables = {"parent": parent, "k_per_unit": k, "units_ms_layer": rng.random(units), "units_ms_pooled": rng.random(units),
              "subunits_ms_layer": ms, "subunits_ms_pooled": ms, "random_ms_layer": ms / 2, "random_ms_pooled": ms / 2,
              "units_top_images": top_u, "subunits_top_images": top_s}
    meta = {"layer": "blocks.11.mlp.fc2", "units": [
        {"k": int(kk), "rho": 0.5, "noise": 10, "top_k": 1000, "cluster_sizes": [100] * int(kk),
         "exclusive_fraction": 0.3} for kk in k]}
    diag = unit_diagnostics(tables, meta["units"], rng.uniform(-1, 1, units))
    tables.update({f"diag_{name}": v for name, v in diag.items()})
    return tables, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=768)
    ap.add_argument("--subunits", type=int, default=3072)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--side", type=int, default=64)
    args = ap.parse_args()
    tables, meta = synthetic(args.units, args.subunits, args.images)
    base = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.float32)

    def thumbnail(i: int) -> np.ndarray:  # a smooth image per id: upsampled 8x8 colours, shifted by the id
        from PIL import Image

        small = ((base + 37 * i) % 256).astype(np.uint8)
        return np.asarray(Image.fromarray(small).resize((args.side, args.side), Image.BICUBIC))

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        n = write_unit_pages(Path(tmp), "bench", tables, meta, thumbnail)
        dt = time.perf_counter() - t
        pages = sum(p.stat().st_size for p in (Path(tmp) / "units").iterdir()) / 2**20
        imgs = list((Path(tmp) / "img").iterdir())
        img_mb = sum(p.stat().st_size for p in imgs) / 2**20
    print(f"{'units':>6} {'sub-units':>9} {'pages':>6} {'images':>7} {'pages MB':>9} {'images MB':>10} {'seconds':>8}")
    print(f"{args.units:>6} {args.subunits:>9} {n:>6} {len(imgs):>7} {pages:>9.1f} {img_mb:>10.1f} {dt:>8.1f}")


if __name__ == "__main__":
    main()
