"""Judgment throughput of an LLM Rank judge (Section B.1; not a test): presentations per second through the
workflow's own backends, at several generation batch sizes and grid cell sizes, measured side by side in
one process on the same random grids of scikit-learn digits.

    .venv/bin/python bench/judges.py                                   # the demo judge, transformers, CPU
    .venv/bin/python bench/judges.py --model Qwen/Qwen3-VL-30B-A3B-Instruct --backend vllm --batch-sizes 64

Prints per (cell size, batch size): judgments, seconds, judgments/s, and the share of replies parsed.
The model loads once per backend (load time printed apart). ``--model demo:<seed>`` (default demo:1) is
the tiny random-init judge of the default run; other models come from a folder or the HF cache.
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

from elude.demo.judge import build_demo_judge  # noqa: E402
from elude.evaluation.judges.backends import TransformersJudge, VllmJudge, model_check  # noqa: E402
from elude.evaluation.judges.grids import grid_image  # noqa: E402
from elude.evaluation.judges.protocol import parse_answer  # noqa: E402
from elude.models import demo_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo:1")
    ap.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    ap.add_argument("--device", default="cpu", help="transformers backend: cpu or cuda")
    ap.add_argument("--presentations", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--cells", default="112,336", help="grid cell sizes in px (B.1: 336)")
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    from PIL import Image
    from sklearn.datasets import load_digits

    model_check(args.model)
    tmp = tempfile.TemporaryDirectory()
    model = str(build_demo_judge(tmp.name, demo_seed(args.model))) if demo_seed(args.model) is not None else args.model
    batches = [int(b) for b in args.batch_sizes.split(",")]
    t0 = time.perf_counter()
    if args.backend == "vllm":
        judge = VllmJudge(model, max_tokens=args.max_tokens, batch_size=max(batches))
    else:
        judge = TransformersJudge(model, args.device, args.max_tokens, max(batches))
    print(f"{args.model} ({args.backend}): loaded in {time.perf_counter() - t0:.1f} s")
    digits = load_digits().images
    rng = np.random.default_rng(0)
    picks = [[rng.choice(len(digits), 9) for _ in range(2)] for _ in range(args.presentations)]
    print(f"{'cell px':>8} {'batch':>6} {'judgments':>10} {'seconds':>8} {'judgments/s':>12} {'parsed %':>9}")
    for cell in (int(c) for c in args.cells.split(",")):
        pairs = [tuple(Image.fromarray(grid_image(list(digits[p]), cell)) for p in pair) for pair in picks]
        for b in batches:
            judge.batch_size = b
            t0 = time.perf_counter()
            replies = judge.ask(pairs)
            sec = time.perf_counter() - t0
            parsed = np.mean([parse_answer(r)["parsed"] for r in replies])
            print(f"{cell:>8} {b:>6} {len(pairs):>10} {sec:>8.2f} {len(pairs) / sec:>12.1f} {100 * parsed:>9.1f}")


if __name__ == "__main__":
    main()
