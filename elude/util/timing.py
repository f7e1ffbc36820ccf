"""Timing passes of torch work on the CPU or a GPU (the one loop Table 5's timings and the CUDA probes share)."""
from __future__ import annotations

import time
from typing import Any, Callable


def timed_ms(fn: Callable[[Any], Any], inputs: Any, iterations: int, device) -> list[float]:
    """Milliseconds of each of ``iterations`` calls ``fn(inputs)`` without autograd: CUDA events on a GPU (the
    device's queue, not the host's launch time), ``perf_counter`` on the CPU."""
    import torch  # here, not above: util/ is imported by torch-free processes (Snakemake's own)

    with torch.no_grad():
        if device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(iterations)]
            for start, end in events:
                start.record()
                fn(inputs)
                end.record()
            torch.cuda.synchronize(device)
            return [s.elapsed_time(e) for s, e in events]
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            fn(inputs)
            times.append((time.perf_counter() - t0) * 1000)
        return times
