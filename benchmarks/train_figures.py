"""One line of figures for a training run: images/s from its metrics.jsonl, GPU use from nvidia-smi.

    python3 benchmarks/train_figures.py RUN_FOLDER [GPU_CSV]

images/s is the median over the logged windows after the first (the first holds start-up: compiling
kernels, filling caches). The CSV is ``nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used
--format=csv,noheader,nounits -lms 250`` sampled during the run; utilisation is given over the whole
run and over its second half (steady training, after data set-up and the text encoder).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def run_figures(run: Path) -> str:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    logged = [json.loads(line) for line in lines if line.strip()]
    speeds = [r["images_per_s"] for r in logged if "images_per_s" in r]
    if not speeds:
        return "no metrics"
    steady = speeds[1:] or speeds
    loss = next(r["loss"] for r in reversed(logged) if "loss" in r)
    return f"{statistics.median(steady):.0f} images/s (median of {len(steady)} windows), last loss {loss:.3f}"


def gpu_figures(csv: Path) -> str:
    if not csv.exists():
        return "no nvidia-smi"
    rows = [line.split(",") for line in csv.read_text().splitlines() if line.count(",") == 2]
    samples = [(float(util), float(memory)) for _, util, memory in rows if util.strip().isdigit()]
    if not samples:
        return "no GPU samples"
    util = [u for u, _ in samples]
    mean, steady = statistics.mean(util), statistics.mean(util[len(util) // 2 :])
    peak = max(m for _, m in samples)
    return f"GPU utilisation {mean:.0f}% (second half {steady:.0f}%), peak memory {peak:.0f} MiB"


def main() -> None:
    run = Path(sys.argv[1])
    parts = [run_figures(run)] + ([gpu_figures(Path(sys.argv[2]))] if len(sys.argv) > 2 else [])
    print("; ".join(parts))


if __name__ == "__main__":
    main()
