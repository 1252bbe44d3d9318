"""The workload `torchkeeper bench` runs in a target's own Python, once with the stock
libraries and once with a bundle applied. Readable on purpose: this is what is measured.

    python bench_workload.py --probe   # JSON: can this torch see a CUDA device?
    python bench_workload.py           # JSON: iterations per second of each part

Parts, shaped like a Stable Diffusion UNet block at 512x512 (latent 64x64, 320 channels):
- conv fp16 / conv bf16: a 3x3 convolution forward and backward (cuDNN);
- attention fp16: scaled-dot-product attention over 4096 tokens, 8 heads of 40 (cuDNN / flash).
Each part: warm-up runs first (cuDNN picks its algorithms, benchmark mode on), then several
timed repetitions, each with CUDA synchronised before and after; the median and the spread
(max - min over median) of the repetitions are reported.

It imports only torch and the standard library, and never torchkeeper.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

WARMUP = 5
REPS = 7
ITERS = 10


def measure(step, sync, clock=time.perf_counter, warmup: int = WARMUP, reps: int = REPS,
            iters: int = ITERS) -> dict[str, Any]:
    """Runs step() warmup times, then reps timed repetitions of iters steps, with sync() (CUDA
    synchronise) around each; {"it_s": median iterations per second, "min", "max", "spread"}."""
    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(reps):
        sync()
        t0 = clock()
        for _ in range(iters):
            step()
        sync()
        rates.append(iters / max(clock() - t0, 1e-9))
    rates.sort()
    med = statistics.median(rates)
    return {"it_s": med, "min": rates[0], "max": rates[-1], "spread": (rates[-1] - rates[0]) / med,
            "reps": reps, "iters": iters}


def probe(torch) -> dict[str, Any]:
    info = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if torch.version.cuda is None:
        info.update(cuda=False, reason=f"torch {torch.__version__} is a CPU build")
    elif not torch.cuda.is_available():
        info.update(cuda=False, reason="torch.cuda.is_available() is False (no CUDA device or driver)")
    else:
        info.update(cuda=True, gpu=torch.cuda.get_device_name(0))
    return info


def parts(torch) -> dict[str, Any]:
    dev = "cuda"
    torch.backends.cudnn.benchmark = True
    out = {}
    for name, dtype in (("conv fp16", torch.float16), ("conv bf16", torch.bfloat16)):
        conv = torch.nn.Conv2d(320, 320, 3, padding=1).to(dev, dtype)
        x = torch.randn(2, 320, 64, 64, device=dev, dtype=dtype, requires_grad=True)

        def step(conv=conv, x=x):
            conv(x).sum().backward()
        out[name] = step
    q, k, v = (torch.randn(2, 8, 4096, 40, device=dev, dtype=torch.float16) for _ in range(3))
    out["attention fp16"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out


def main(argv: list[str]) -> int:
    import torch

    info = probe(torch)
    if "--probe" in argv or not info["cuda"]:
        print(json.dumps(info))
        return 0
    sync = torch.cuda.synchronize
    info["parts"] = {name: measure(step, sync) for name, step in parts(torch).items()}
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
