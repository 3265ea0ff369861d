"""Diagnosis: why the persona-consistency score C is near 0 (issue 18), measured on replies.

C (``fedpkt.eval.consistency.OracleScorer``) is +1 for each persona fact a reply states, -1 for
each persona slot it states another value of, 0 otherwise. So C near 0 means replies state few
facts, or state the wrong ones as often as the right ones. This script counts which, on the
embedded default (``--config embedded``, seed 0, synthetic ``default`` scale), for the test
contexts of the first ``--part-b`` Part B and ``--part-c`` Part C personas:

- ``ground truth``: the corpus's own test replies (the reveal rate the data has);
- ``source prefix alone``: the phase-1 source prefix, not personalized;
- ``PersonaPKT``: each persona's prefix after phase 2 from the source prefix;
- ``random init``: each persona's prefix after phase 2 from a random prefix;
- ``no prefix``: the bare backbone on the same ``B:`` prompt (the backbone's own reply policy).

Phase 1 is the default config's, run centralized (``fedpkt.centralized``: the same maths as the
federated run), unless ``--source`` names a ``source.safetensors``. Phase 2 is
``fedpkt.personalize.personalize_cohort`` with the server's per-persona seeds. The trained
prefixes are decoded with the run's default search (beam 5, length penalty 1.0) and, for the
two personalized conditions, with greedy search and other length penalties.

For every set of replies: the share stating any catalogue fact, one of the persona's own
facts, a fact of a slot the persona does not have, and a contradiction of the persona; C (mean
over personas of the mean over replies, as the paper reports it); the same shares on the
contexts whose last partner turn asks about one of the persona's own slots (where every
ground-truth reply states the fact), with the share of "not sure" replies there (the corpus's
answer to a question about a slot the persona does not have); the share that asks a partner's
catalogue question (a reply in the wrong role); the share that repeats, as the persona's, a fact
the history states but the persona does not hold (copying the partner); and blandness:
distinct replies and the most frequent ones. A forced-choice probe (``fact_probe``) then asks
whether each prefix holds the persona's facts at all, whatever the search makes of them. Prints
one JSON object; ``--markdown`` also prints the tables for bench/RESULTS.md. About 5 minutes on
one thread.

    .venv/bin/python bench/reply_facts.py [--part-b 30] [--part-c 20] [--threads 1] [--markdown]
        [--set "backbone.embedded_recipe='prose'"]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import torch
from safetensors.numpy import load_file

from fedpkt.baselines import personalize_seed
from fedpkt.centralized import open_clients, train_source_centralized
from fedpkt.config import FedpktConfig, GenerationConfig, load_config
from fedpkt.data.catalogue import SLOT_BY_NAME, SLOTS, render
from fedpkt.data.encoding import collate, encode_examples, render_history
from fedpkt.data.facts import CONTRADICT, extract_facts, nli_relation, normalize
from fedpkt.data.partition import load_client, load_manifest, prepare_partitions
from fedpkt.data.schema import Example, Fact, Persona, Utterance
from fedpkt.data.synthetic import NOT_SURE
from fedpkt.eval.consistency import OracleScorer, make_scorer
from fedpkt.local import LocalClient
from fedpkt.model.backbone import load_backbone_from_config
from fedpkt.model.generate import generate_replies
from fedpkt.model.prefix import forward_with_prefix
from fedpkt.personalize import PersonalizeResult, PersonaTask, personalize_cohort
from fedpkt.train.loop import eval_mode, pad_id_for, response_nll_rows

TOP_REPLIES = 5
"""How many of the most frequent replies count as the bland ones."""

DECODINGS: dict[str, dict[str, float | int]] = {
    "greedy": {"num_beams": 1},
    "beam 5, lp 0.0": {"length_penalty": 0.0},
    "beam 5, lp 2.0": {"length_penalty": 2.0},
}
"""Decoding variants tried on the personalized prefixes (changes to the run's [generation])."""


@dataclass(frozen=True)
class Context:
    """One test context of one persona: its prompt, the slot its last partner turn asks about
    (None if it asks nothing the catalogue knows) and the ground-truth reply."""

    client_id: str
    persona: Persona
    example: Example

    @property
    def prompt(self) -> str:
        return render_history(self.example.history)

    @property
    def asks_own_slot(self) -> bool:
        asked = asked_slot(self.example.history[-1].text) if self.example.history else None
        return asked is not None and asked in {f.slot for f in self.persona.facts}


def asked_slot(text: str) -> str | None:
    """The catalogue slot whose question ``text`` contains (first found), else None."""
    norm = normalize(text)
    for slot in SLOTS:
        if any(normalize(q) in norm for q in slot.questions):
            return slot.name
    return None


def reply_row(reply: str, context: Context) -> dict[str, bool]:
    """What one reply states relative to its persona and to its history (copied facts)."""
    persona = context.persona
    stated = extract_facts(reply)
    own_slots = {f.slot for f in persona.facts}
    heard = {f for u in context.example.history for f in extract_facts(u.text)}
    return {
        "copies_history_fact": any(f in heard and f not in persona.facts for f in stated),
        "any_fact": bool(stated),
        "own_fact": any(f in persona.facts for f in stated),
        "other_slot_fact": any(f.slot not in own_slots for f in stated),
        "contradicts": any(nli_relation(stated, f) == CONTRADICT for f in persona.facts),
        "asks_catalogue_question": asked_slot(reply) is not None,
        "not_sure": any(phrase in reply for phrase in NOT_SURE),
    }


def share(rows: Sequence[dict[str, bool]], key: str) -> float | None:
    return round(fmean(r[key] for r in rows), 3) if rows else None


def reply_stats(replies: Sequence[str], contexts: Sequence[Context]) -> dict:
    """The shares, C and blandness figures of one set of replies (one per context)."""
    rows = [reply_row(r, c) for r, c in zip(replies, contexts, strict=True)]
    asked = [row for row, c in zip(rows, contexts, strict=True) if c.asks_own_slot]
    scorer = OracleScorer()
    per_persona: dict[str, list[float]] = {}
    for reply, context in zip(replies, contexts, strict=True):
        c_value = scorer.score([reply], context.persona)[0]
        per_persona.setdefault(context.client_id, []).append(c_value)
    counts = Counter(replies)
    top = counts.most_common(TOP_REPLIES)
    facts = Counter(f"{f.slot}={f.value}" for r in replies for f in extract_facts(r))
    return {
        "n": len(rows),
        **{key: share(rows, key) for key in rows[0]},
        "c_score": round(fmean(fmean(v) for v in per_persona.values()), 3),
        "asked_own_slot": {
            "n": len(asked),
            "own_fact": share(asked, "own_fact"),
            "contradicts": share(asked, "contradicts"),
            "not_sure": share(asked, "not_sure"),
        },
        "distinct_replies": round(len(counts) / len(replies), 3),
        "top_share": round(sum(n for _, n in top) / len(replies), 3),
        "top_replies": [[text, n] for text, n in top],
        "top_facts": [[fact, n] for fact, n in facts.most_common(TOP_REPLIES)],
    }


def probe_examples(fact: Fact) -> list[Example]:
    """The slot's first question, answered with its first template and each value in turn."""
    slot = SLOT_BY_NAME[fact.slot]
    question = Utterance("partner", slot.questions[0])
    return [
        Example([question], Utterance("persona", render(slot.templates[0], value) + "."))
        for value in slot.values
    ]


@torch.no_grad()
def fact_probe(clients: list[LocalClient], states: dict[str, torch.Tensor] | None) -> dict:
    """Does the prefix hold the persona's facts, whatever decoding does with them?

    For every fact of every persona: the summed NLL of the answer "i work as a <value>." to the
    slot's question, for each value of the slot, under the persona's folded prefix (None: the
    bare backbone). Reports how often the persona's own value is the most likely one (chance is
    the mean of 1 / number of values) and its mean rank (0 = first).
    """
    model = clients[0].backbone.model
    tokenizer = clients[0].backbone.tokenizer
    pad_id = pad_id_for(model, tokenizer)
    hits, ranks, chance = [], [], []
    for client in clients:
        state = None if states is None else states[client.client_id]
        for fact in client.data.persona.facts:
            examples = probe_examples(fact)
            batch = collate(encode_examples(examples, tokenizer, client.max_tokens), pad_id)
            rows = None if state is None else state.unsqueeze(0).expand(len(examples), -1, -1)
            with eval_mode(model):
                logits = forward_with_prefix(
                    model, batch["input_ids"], batch["attention_mask"], rows
                ).logits
            nll, _ = response_nll_rows(logits, batch["labels"])  # (values,)
            values = SLOT_BY_NAME[fact.slot].values
            own = nll[values.index(fact.value)]
            rank = int((nll < own).sum())
            hits.append(rank == 0)
            ranks.append(rank)
            chance.append(1 / len(values))
    return {
        "facts": len(hits),
        "own_value_most_likely": round(fmean(hits), 3),
        "chance": round(fmean(chance), 3),
        "mean_rank": round(fmean(ranks), 2),
    }


def source_prefix(cfg: FedpktConfig, root: Path, backbone, path: Path | None) -> dict:
    """The source prefix: loaded from ``path``, else phase 1 of ``cfg`` run centralized."""
    if path is not None:
        return load_file(str(path))
    clients = open_clients(cfg, root, backbone, "A")
    return train_source_centralized(cfg, clients, backbone)


def personalized(
    clients: list[LocalClient], source: dict | None, cfg: FedpktConfig
) -> dict[str, PersonalizeResult]:
    """Phase 2 of every client from ``source`` (None: random init), default settings."""
    init = "source" if source is not None else "random"
    tasks = [PersonaTask(c, personalize_seed(cfg, c.client_id)) for c in clients]
    outcomes = personalize_cohort(
        tasks,
        source,
        scorer=make_scorer(cfg.eval),
        phase2=cfg.phase2.model_copy(update={"init": init}),
    )
    failed = {k: v for k, v in outcomes.items() if not isinstance(v, PersonalizeResult)}
    if failed:
        raise SystemExit(f"phase 2 failed: {failed}")
    return outcomes  # type: ignore[return-value]


def decode(
    clients: list[LocalClient],
    contexts: Sequence[Context],
    states: dict[str, torch.Tensor] | None,
    generation: GenerationConfig,
) -> list[str]:
    """One reply per context under its persona's folded prefix (None: the bare backbone)."""
    first = clients[0]
    rows = None
    if states is not None:
        rows = torch.stack([states[c.client_id] for c in contexts])
    return generate_replies(
        first.backbone.model,
        first.backbone.tokenizer,
        rows,
        [c.prompt for c in contexts],
        generation,
        max_length=first.cfg.data.max_length,
        batch_size=64,
    )


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, [f"seed={args.seed}", *args.overrides])
    backbone = load_backbone_from_config(cfg.backbone, progress=False)
    timings: dict[str, float] = {}
    out: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d"),
        "config": args.config,
        "seed": cfg.seed,
        "generation": cfg.generation.model_dump(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        prepare_partitions(root, cfg.data.model_copy(update={"canaries": 0}), cfg.seed)
        manifest = load_manifest(root)
        by_part = {
            part: [e["client_id"] for e in manifest["clients"] if e["part"] == part]
            for part in ("B", "C")
        }
        # The corpus's reveal rate over every Part B/C test reply, before any model.
        every = [
            Context(cid, data.persona, ex)
            for part in ("B", "C")
            for cid in by_part[part]
            for data in [load_client(root, cid)]
            for ex in LocalClient(data, backbone, cfg).examples["test"]
        ]
        out["ground_truth_all_B_C"] = reply_stats([c.example.response.text for c in every], every)
        ids = by_part["B"][: args.part_b] + by_part["C"][: args.part_c]
        clients = [LocalClient(load_client(root, cid), backbone, cfg) for cid in ids]
        out["personas"] = {
            "B": len(by_part["B"][: args.part_b]),
            "C": len(by_part["C"][: args.part_c]),
        }
        contexts = [
            Context(c.client_id, c.data.persona, ex) for c in clients for ex in c.examples["test"]
        ]
        started = time.perf_counter()
        source = source_prefix(cfg, root, backbone, args.source)
        timings["phase1"] = time.perf_counter() - started
        started = time.perf_counter()
        results = {
            "PersonaPKT": personalized(clients, source, cfg),
            "random init": personalized(clients, None, cfg),
        }
        timings["phase2"] = time.perf_counter() - started
        started = time.perf_counter()
        table: dict[str, dict] = {
            "ground truth": reply_stats([c.example.response.text for c in contexts], contexts)
        }
        table["no prefix (bare backbone), beam 5"] = reply_stats(
            decode(clients, contexts, None, cfg.generation), contexts
        )
        probe = {"no prefix (bare backbone)": fact_probe(clients, None)}
        alone = {c.client_id: c.prefix_from(source, seed=0).fold().detach() for c in clients}
        table["source prefix alone, beam 5"] = reply_stats(
            decode(clients, contexts, alone, cfg.generation), contexts
        )
        probe["source prefix alone"] = fact_probe(clients, alone)
        for name, outcomes in results.items():
            replies = [r for cid in ids for r in outcomes[cid].generated]
            table[f"{name}, beam 5 (run default)"] = reply_stats(replies, contexts)
            table[f"{name}, beam 5 (run default)"]["run_metrics"] = {
                key: round(fmean(outcomes[cid].metrics[key] for cid in ids), 3)
                for key in ("c_score", "test_loss", "init_test_loss", "epochs", "best_epoch")
            }
            folded = {cid: outcomes[cid].folded for cid in ids}
            probe[name] = fact_probe(clients, folded)
            for variant, change in DECODINGS.items():
                generation = cfg.generation.model_copy(update=change)
                table[f"{name}, {variant}"] = reply_stats(
                    decode(clients, contexts, folded, generation), contexts
                )
        timings["decoding"] = time.perf_counter() - started
    out["table"] = table
    out["fact_probe"] = probe
    out["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    return out


def markdown(result: dict) -> str:
    """The figures table of ``result`` for bench/RESULTS.md."""
    lines = [
        "| replies | n | any fact | own fact | other-slot fact | contradicts | C "
        "| own fact when asked | contradicts when asked | not sure when asked | asks a question "
        "| copies the partner | distinct | top-5 share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = dict(result["table"])
    if result["ground_truth_all_B_C"]["n"] != rows["ground truth"]["n"]:
        rows = {"ground truth, all Part B/C test replies": result["ground_truth_all_B_C"]} | rows
    for name, s in rows.items():
        asked = s["asked_own_slot"]
        lines.append(
            f"| {name} | {s['n']} | {s['any_fact']:.3f} | {s['own_fact']:.3f} "
            f"| {s['other_slot_fact']:.3f} | {s['contradicts']:.3f} | {s['c_score']:.3f} "
            f"| {asked['own_fact']:.3f} (n={asked['n']}) | {asked['contradicts']:.3f} "
            f"| {asked['not_sure']:.3f} "
            f"| {s['asks_catalogue_question']:.3f} | {s['copies_history_fact']:.3f} "
            f"| {s['distinct_replies']:.3f} "
            f"| {s['top_share']:.3f} |"
        )
    lines.append("")
    for name, s in rows.items():
        top = "; ".join(f'"{text}" ×{n}' for text, n in s["top_replies"])
        facts = ", ".join(f"{fact} ×{n}" for fact, n in s["top_facts"])
        lines.append(f"- {name}: {top}. Facts stated most: {facts or 'none'}.")
    lines += [
        "",
        "| prefix | facts probed | own value most likely | chance | mean rank of own value |",
        "|---|---|---|---|---|",
    ]
    for name, p in result["fact_probe"].items():
        lines.append(
            f"| {name} | {p['facts']} | {p['own_value_most_likely']:.3f} | {p['chance']:.3f} "
            f"| {p['mean_rank']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="embedded")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="section.key=value"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part-b", type=int, default=30, help="first N Part B personas")
    parser.add_argument("--part-c", type=int, default=20, help="first N Part C personas")
    parser.add_argument("--source", type=Path, help="a source.safetensors instead of phase 1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="also print the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(result))


if __name__ == "__main__":
    main()
