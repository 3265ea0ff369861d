"""Benchmark: build the embedded backbone from scratch and print one JSON object.

A fresh temporary cache is used, so the number is a real build (never a cache hit). The load
average before and after is printed too: the build must stay under 5 minutes on 2 shared CPU
cores, and a timing means little without knowing how busy the machine was.

    .venv/bin/python bench/backbone_build.py --size default [--recipe prose|dialogue]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from fedpkt.cache import CACHE_ENV
from fedpkt.model.embedded import ensure_embedded, read_build_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=["tiny", "default"])
    parser.add_argument("--recipe", default="dialogue", choices=["dialogue", "prose"])
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedpkt-bench-") as cache:
        os.environ[CACHE_ENV] = cache
        started = time.perf_counter()
        path = ensure_embedded(args.size, args.recipe, progress=False)
        wall = time.perf_counter() - started
        record = read_build_info(path) or {}
    print(
        json.dumps(
            {
                "size": args.size,
                "corpus": args.recipe,
                "build_seconds_wall": round(wall, 2),
                "build_seconds_recorded": record.get("build_seconds"),
                "num_params": record.get("num_params"),
                "valid_perplexity": record.get("valid_perplexity"),
                "unigram_perplexity": record.get("unigram_perplexity"),
                "dialogue_perplexity": record.get("dialogue_perplexity"),
                "final_train_loss": record.get("final_train_loss"),
                "valid_tokens": record.get("valid_tokens"),
                "recipe": record.get("recipe"),
                "cpu_count": os.cpu_count(),
                "load_avg_1m_before": round(load_before[0], 2),
                "load_avg_1m_after": round(os.getloadavg()[0], 2),
                "machine": platform.processor() or platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
