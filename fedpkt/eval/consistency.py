"""Persona consistency: the C score of Madotto et al. (2019), used by the paper's Table 2.

C(u) = Σ_j NLI(u, p_j) over the persona's description p_1..p_m, with NLI = 1 if the response u
entails p_j, 0 if neutral, -1 if it contradicts p_j. So C(u) lies in [-m, m].

Two backends give NLI(u, p_j) behind one interface (``ConsistencyScorer``), or none at all
(``c_backend = "none"``, for real data without an NLI model: C is then *not measured*, which
every table shows as n/a and every JSON file as null, never as 0):

- ``OracleScorer``: the synthetic corpus knows which facts a text states, so NLI is exact
  (``fedpkt.data.facts``), summed over ``persona.facts``;
- ``NLIModelScorer``: any Hugging Face sequence-classification NLI model (the paper used BERT
  trained on Dialogue NLI), summed over ``persona.sentences``. Premise = the response,
  hypothesis = the persona sentence, which is the direction "u entails p_j" of the formula.

Per-persona and cross-persona means live in ``fedpkt.eval.scoring``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fedpkt.config import EvalConfig
from fedpkt.data.facts import CONTRADICT, ENTAIL, NEUTRAL, extract_facts, nli_relation
from fedpkt.data.schema import Persona
from fedpkt.errors import FedpktError

# Label names found in NLI checkpoints' config.id2label (MNLI, SNLI, DNLI ports), lower-cased.
_LABEL_VALUES: dict[str, int] = {
    "entailment": ENTAIL,
    "entail": ENTAIL,
    "entailed": ENTAIL,
    "neutral": NEUTRAL,
    "contradiction": CONTRADICT,
    "contradict": CONTRADICT,
    "contradictory": CONTRADICT,
}


@runtime_checkable
class ConsistencyScorer(Protocol):
    """Anything that gives C(u) for each response of one persona."""

    def score(self, responses: list[str], persona: Persona) -> list[float]:
        """C(u) for each response, in order: a list as long as ``responses``."""
        ...


def c_score(relations: Iterable[int]) -> float:
    """Formula (4): the sum of NLI(u, p_j) ∈ {1, 0, -1} over the persona's sentences/facts."""
    total = 0
    for relation in relations:
        if relation not in (ENTAIL, NEUTRAL, CONTRADICT):
            raise FedpktError(f"NLI relation {relation!r} is not 1, 0 or -1")
        total += relation
    return float(total)


class OracleScorer:
    """Exact C score on the synthetic corpus: the facts a response states vs the persona's facts.

    A response that states the persona fact entails it; one that states another value of the
    same (single-valued) slot contradicts it, even if it also states the right value; one that
    says nothing of the slot is neutral (``fedpkt.data.facts.nli_relation``).
    """

    def score(self, responses: list[str], persona: Persona) -> list[float]:
        """C(u) = Σ over persona.facts of nli_relation(extract_facts(u), fact)."""
        if not persona.facts:
            raise FedpktError(
                f"persona '{persona.persona_id}' has no facts "
                "(the oracle C score needs the synthetic corpus; use eval.c_backend='model')"
            )
        return [self._one(response, persona) for response in responses]

    @staticmethod
    def _one(response: str, persona: Persona) -> float:
        stated = extract_facts(response)
        return c_score(nli_relation(stated, fact) for fact in persona.facts)


def label_values(id2label: dict[int, str]) -> dict[int, int]:
    """Map a model's class ids to NLI values {1, 0, -1} from its config's label names.

    Names are matched case-insensitively ('ENTAILMENT', 'entail', 'Contradiction', ...). Every
    class must map and all three relations must be present; otherwise the model's output cannot
    be read as an NLI verdict and FedpktError names the label that failed.

    >>> label_values({0: "CONTRADICTION", 1: "neutral", 2: "Entailment"})
    {0: -1, 1: 0, 2: 1}
    """
    mapping: dict[int, int] = {}
    for class_id, name in sorted(id2label.items()):
        value = _LABEL_VALUES.get(str(name).strip().lower())
        if value is None:
            raise FedpktError(
                f"NLI model label {name!r} (class {class_id}) is not an NLI label "
                "(expected entailment/neutral/contradiction names in config id2label)"
            )
        mapping[int(class_id)] = value
    if set(mapping.values()) != {ENTAIL, NEUTRAL, CONTRADICT}:
        names = sorted(str(name) for name in id2label.values())
        raise FedpktError(
            f"NLI model labels {names} do not cover all three relations "
            "(expected entailment, neutral and contradiction in config id2label)"
        )
    return mapping


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise FedpktError(
            f"device {device!r} is not a device (expected 'auto', 'cpu', 'cuda' or 'cuda:N')"
        ) from None


class NLIModelScorer:
    """C score from an NLI classifier: every (response, persona sentence) pair is one premise /
    hypothesis input; the argmax class, read through config.id2label, is NLI(u, p_j).

    The model is loaded once and kept, so one scorer serves every persona of a run.
    Pairs are scored in batches of ``batch_size`` (padding per batch) under ``torch.no_grad``.
    """

    def __init__(self, model_dir: str | Path, batch_size: int = 32, device: str = "auto") -> None:
        if batch_size < 1:
            raise FedpktError(f"NLI batch_size {batch_size} must be >= 1")
        self.batch_size = batch_size
        self.device = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        except (OSError, ValueError) as err:
            # Hugging Face messages run to many lines; the first one names the problem.
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise FedpktError(
                f"NLI model '{model_dir}' could not be loaded ({first_line}); "
                "expected a Hugging Face sequence-classification model directory or id"
            ) from None
        self.values = label_values(model.config.id2label)
        self.model = model.to(self.device).eval()
        # Long pairs are truncated to what both the tokenizer and the position table accept.
        limits = [self.tokenizer.model_max_length]
        limits.append(getattr(model.config, "max_position_embeddings", limits[0]))
        self.max_length = int(min(limits))

    @torch.no_grad()
    def relations(self, premises: list[str], hypotheses: list[str]) -> list[int]:
        """NLI(premise_i, hypothesis_i) ∈ {1, 0, -1} for each aligned pair, batched."""
        out: list[int] = []
        for start in range(0, len(premises), self.batch_size):
            batch = self.tokenizer(
                premises[start : start + self.batch_size],
                hypotheses[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            classes = self.model(**batch).logits.argmax(dim=-1)  # (batch,)
            out.extend(self.values[int(c)] for c in classes.tolist())
        return out

    def score(self, responses: list[str], persona: Persona) -> list[float]:
        """C(u) = Σ_j NLI(u, p_j) over persona.sentences, for each response u."""
        sentences = persona.sentences
        if not sentences:
            raise FedpktError(
                f"persona '{persona.persona_id}' has no description sentences "
                "(the model C score compares responses with them)"
            )
        premises = [r for r in responses for _ in sentences]
        hypotheses = [s for _ in responses for s in sentences]
        flat = self.relations(premises, hypotheses)  # (len(responses) * m,), response-major
        m = len(sentences)
        return [c_score(flat[i * m : (i + 1) * m]) for i in range(len(responses))]


def make_scorer(eval_config: EvalConfig) -> ConsistencyScorer | None:
    """The C-score backend the config names ('oracle' or 'model'); build it once per run.

    None for ``c_backend = "none"``: C is not measured (``score_responses`` then leaves it out).
    """
    if eval_config.c_backend == "none":
        return None
    if eval_config.c_backend == "oracle":
        return OracleScorer()
    return NLIModelScorer(
        eval_config.nli_model, batch_size=eval_config.nli_batch_size, device=eval_config.nli_device
    )
