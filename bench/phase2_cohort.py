"""Benchmark: phase-2 personas per hour, cohort-batched vs one at a time (issue 13 §6).

Runs the code a ClientApp runs for a phase-2 message (``fedpkt.personalize.personalize_cohort``:
training with early stopping, test losses, beam-5 generation, scoring), without Flower, on the
same personas with the same seeds:

- ``one_at_a_time``: one persona per call, ``cohort_size=1`` (what a real device does);
- ``cohort_<C>``: all personas in one call, C personas per backbone pass (continuous batching).

and, separately, beam-5 generation of every persona's test replies under its own prefix: one
``generate`` call per persona against calls that mix the prompts of many personas.

The personas are the first N Part B/C personas of the paper-scale synthetic corpus (regular and
few-shot mixed as the corpus mixes them), each starting from its own random prefix, on the
embedded default backbone. One process, ``--threads`` torch threads (a simulation worker uses
one). Wall and CPU seconds are both reported: on a machine shared with other jobs, CPU
seconds of this single-threaded process are the fairer comparison. Prints one JSON object.

    .venv/bin/python bench/phase2_cohort.py [--personas 32,64] [--cohorts 8,16,32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from fedpkt.config import DataConfig, load_config
from fedpkt.data.encoding import render_history
from fedpkt.data.partition import load_client, load_manifest, prepare_partitions
from fedpkt.eval.consistency import make_scorer
from fedpkt.local import LocalClient
from fedpkt.model.backbone import load_backbone_from_config
from fedpkt.model.generate import generate_replies
from fedpkt.personalize import (
    GENERATION_ROWS_PER_PERSONA,
    PersonalizeResult,
    PersonaTask,
    personalize_cohort,
)


def _personas_per_hour(n: int, seconds: float) -> float:
    return round(3600.0 * n / seconds, 1)


def _generation(clients: list[LocalClient], folded: dict[str, torch.Tensor], rows: int) -> float:
    """CPU seconds to generate every persona's test replies, ``rows`` prompts per call (0: one
    call per persona)."""
    generation = clients[0].cfg.generation
    max_length = clients[0].cfg.data.max_length
    backbone = clients[0].backbone
    started = time.process_time()
    if rows == 0:
        for client in clients:
            prompts = [render_history(ex.history) for ex in client.examples["test"]]
            generate_replies(
                backbone.model,
                backbone.tokenizer,
                folded[client.client_id],
                prompts,
                generation,
                max_length=max_length,
                batch_size=GENERATION_ROWS_PER_PERSONA,
            )
    else:
        prompts, states = [], []
        for client in clients:
            for ex in client.examples["test"]:
                prompts.append(render_history(ex.history))
                states.append(folded[client.client_id])
        generate_replies(
            backbone.model,
            backbone.tokenizer,
            torch.stack(states),
            prompts,
            generation,
            max_length=max_length,
            batch_size=rows,
        )
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--personas", default="32,64")
    parser.add_argument("--cohorts", default="8,16,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", default="embedded")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(x) for x in args.personas.split(",")]
    cohorts = [int(x) for x in args.cohorts.split(",")]
    cfg = load_config(args.config, ["data.scale='paper'"])
    backbone = load_backbone_from_config(cfg.backbone, progress=False)
    scorer = make_scorer(cfg.eval)
    out: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d"),
        "backbone": f"{cfg.backbone.name}/{cfg.backbone.embedded_size}",
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        prepare_partitions(root, DataConfig(scale="paper"), cfg.seed)
        ids = [e["client_id"] for e in load_manifest(root)["clients"] if e["part"] != "A"]
        # Interleave B and C as a node's round-robin share would (every 4th client of B + C).
        ids = ids[::4]
        clients = [LocalClient(load_client(root, cid), backbone, cfg) for cid in ids]
        for n in counts:
            tasks = [PersonaTask(c, seed=i) for i, c in enumerate(clients[:n])]
            row: dict = {"personas": n}
            phase2 = cfg.phase2.model_copy(update={"init": "random"})
            started, cpu = time.perf_counter(), time.process_time()
            alone: dict = {}
            for task in tasks:
                alone |= personalize_cohort(
                    [task],
                    None,
                    scorer=scorer,
                    phase2=phase2.model_copy(update={"cohort_size": 1}),
                )
            base, base_cpu = time.perf_counter() - started, time.process_time() - cpu
            row["one_at_a_time"] = {
                "seconds": round(base, 1),
                "cpu_seconds": round(base_cpu, 1),
                "personas_per_hour": _personas_per_hour(n, base),
            }
            for size in cohorts:
                if size > n:
                    continue
                started, cpu = time.perf_counter(), time.process_time()
                batched = personalize_cohort(
                    tasks,
                    None,
                    scorer=scorer,
                    phase2=phase2.model_copy(update={"cohort_size": size}),
                )
                seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
                same = sum(
                    isinstance(batched[k], PersonalizeResult)
                    and isinstance(alone[k], PersonalizeResult)
                    and batched[k].generated == alone[k].generated
                    for k in alone
                )
                row[f"cohort_{size}"] = {
                    "seconds": round(seconds, 1),
                    "personas_per_hour": _personas_per_hour(n, seconds),
                    "cpu_seconds": round(cpu_s, 1),
                    "speedup": round(base / seconds, 2),
                    "cpu_speedup": round(base_cpu / cpu_s, 2),
                    "identical_replies": f"{same}/{n} (float32: rounding may move a beam)",
                }
            folded = {k: v.folded for k, v in alone.items() if isinstance(v, PersonalizeResult)}
            gen_clients = [c for c in clients[:n] if c.client_id in folded]
            per_persona = _generation(gen_clients, folded, 0)
            row["generation"] = {"per_persona_cpu_s": round(per_persona, 1)}
            for size in cohorts:
                rows = GENERATION_ROWS_PER_PERSONA * size
                seconds = _generation(gen_clients, folded, rows)
                row["generation"][f"rows_{rows}_cpu_s"] = round(seconds, 1)
                row["generation"][f"rows_{rows}_speedup"] = round(per_persona / seconds, 2)
            out["results"].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
