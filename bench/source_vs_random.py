"""Benchmark: PersonaPKT against Rand init + Prefix-tuning over several data seeds.

One embedded-default run decides issue 5's comparison on ~30 Part B personas, and the
difference it measures (about one F1 point) is the size of the seed-to-seed noise. This runs
`fedpkt simulate` and its `--init random` twin for each seed (each seed draws other personas,
other dialogues, other phase-1 cohorts) and reports, per Part, the means and how many seeds
each effect held on. Runs already finished under ``--out`` are reused. Prints one JSON object
and writes ``summary.md`` beside the runs.

    .venv/bin/python bench/source_vs_random.py [--seeds 0,1,2,3,4] [--out runs/source-vs-random]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import fmean

from fedpkt.atomic import atomic_write_text
from fedpkt.config import load_config
from fedpkt.rundir import RunDir
from sim.simulate import simulate

KEYS = ("f1", "c_score", "test_loss", "init_test_loss")


def finished_run(config: str, seed: int, init: str, run_dir: Path) -> RunDir:
    """The run for (seed, init): reused if it finished before, else simulated now."""
    if (run_dir / "metrics.jsonl").is_file() and RunDir(run_dir).events("done"):
        return RunDir(run_dir)
    cfg = load_config(config, [f"seed={seed}", f"phase2.init='{init}'"])
    return simulate(cfg, run_dir)


def part_means(run: RunDir) -> dict[str, dict[str, float]]:
    """Mean of each metric over the personas of Part B and of Part C."""
    rows = run.events("client")
    return {
        part: {key: fmean(r[key] for r in rows if r["part"] == part) for key in KEYS}
        for part in ("B", "C")
    }


def compare(seeds: list[int], out: Path, config: str) -> dict:
    per_seed = []
    for seed in seeds:
        started = time.perf_counter()
        pkt = part_means(finished_run(config, seed, "source", out / f"seed{seed}-source"))
        rand = part_means(finished_run(config, seed, "random", out / f"seed{seed}-random"))
        per_seed.append(
            {"seed": seed, "pkt": pkt, "random": rand, "seconds": time.perf_counter() - started}
        )
    summary = {}
    for part in ("B", "C"):
        pkt = [s["pkt"][part] for s in per_seed]
        rand = [s["random"][part] for s in per_seed]
        summary[part] = {
            "f1_pkt": fmean(p["f1"] for p in pkt),
            "f1_random": fmean(r["f1"] for r in rand),
            "c_pkt": fmean(p["c_score"] for p in pkt),
            "c_random": fmean(r["c_score"] for r in rand),
            "test_loss_pkt": fmean(p["test_loss"] for p in pkt),
            "test_loss_source_alone": fmean(p["init_test_loss"] for p in pkt),
            "test_loss_random": fmean(r["test_loss"] for r in rand),
            "seeds_f1_pkt_above_random": sum(
                p["f1"] > r["f1"] for p, r in zip(pkt, rand, strict=True)
            ),
            "seeds_loss_below_source_alone": sum(p["test_loss"] < p["init_test_loss"] for p in pkt),
            "seeds_c_pkt_positive": sum(p["c_score"] > 0 for p in pkt),
        }
    return {"config": config, "seeds": seeds, "per_seed": per_seed, "summary": summary}


def markdown(result: dict) -> str:
    lines = [
        "| seed | Part | F1 PersonaPKT | F1 random init | C PersonaPKT | C random init "
        "| test loss PersonaPKT | source prefix alone | random init |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["per_seed"]:
        for part in ("B", "C"):
            p, r = s["pkt"][part], s["random"][part]
            lines.append(
                f"| {s['seed']} | {part} | {100 * p['f1']:.2f} | {100 * r['f1']:.2f} "
                f"| {p['c_score']:.3f} | {r['c_score']:.3f} | {p['test_loss']:.3f} "
                f"| {p['init_test_loss']:.3f} | {r['test_loss']:.3f} |"
            )
    n = len(result["seeds"])
    for part, m in result["summary"].items():
        lines.append(
            f"| mean of {n} | {part} | {100 * m['f1_pkt']:.2f} | {100 * m['f1_random']:.2f} "
            f"| {m['c_pkt']:.3f} | {m['c_random']:.3f} | {m['test_loss_pkt']:.3f} "
            f"| {m['test_loss_source_alone']:.3f} | {m['test_loss_random']:.3f} |"
        )
    for part, m in result["summary"].items():
        lines.append(
            f"\nPart {part}: F1 PersonaPKT > random init on {m['seeds_f1_pkt_above_random']}/{n} "
            f"seeds; test loss below the source prefix alone on "
            f"{m['seeds_loss_below_source_alone']}/{n}; C > 0 on {m['seeds_c_pkt_positive']}/{n}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=Path("runs/source-vs-random"))
    parser.add_argument("--config", default="embedded")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    result = compare(seeds, args.out, args.config)
    atomic_write_text(args.out / "summary.md", markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
