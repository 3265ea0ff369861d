"""C score (Madotto et al.): Σ_j NLI(u, p_j) with entail 1 / neutral 0 / contradict -1.

The model backend is tested with a tiny, randomly initialised BERT NLI classifier and a tiny
WordPiece tokenizer built here and saved to a temporary directory (no hub access).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
)

from fedpkt.config import EvalConfig
from fedpkt.data.schema import Fact, Persona
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import (
    ConsistencyScorer,
    NLIModelScorer,
    OracleScorer,
    c_score,
    label_values,
    make_scorer,
)

torch.set_num_threads(1)

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "i", "have", "a", "dog", "cat", "love", "my", "red", "car", "like", "to", "swim",
    "hate", "am", "teacher", "nurse", "blue", "water", "never", "##s", ".", "work", "as",
]  # fmt: skip
# Class ids deliberately not in MNLI order, and names in mixed case / short forms.
ID2LABEL = {0: "CONTRADICTION", 1: "Neutral", 2: "entail"}

PERSONA = Persona(
    persona_id="p1",
    sentences=["i have a dog.", "i work as a nurse.", "i like to swim."],
)
RESPONSES = [
    "i love my dog",
    "i never swim , i hate water and i am a teacher",
    "my car is red",
    "cats",
    "",
]


def build_nli_model(
    directory: Path, id2label: dict[int, str], forced_class: int | None = None, seed: int = 1
) -> Path:
    """Save a tiny BERT NLI classifier + WordPiece tokenizer; ``forced_class`` makes the
    classifier constant (zero weight, a large bias on that class) so its verdict is known.

    initializer_range 0.5 (not BERT's 0.02) so that a random model's argmax varies between
    pairs: with seed 1 the 15 pairs below get all three classes, no gap under 8e-3."""
    torch.manual_seed(seed)
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)})
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        initializer_range=0.5,
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    model = BertForSequenceClassification(config)
    if forced_class is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            model.classifier.bias[forced_class] = 5.0
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nli_model(tmp_path_factory.mktemp("nli"), ID2LABEL)


def test_c_score_sums_relations() -> None:
    """Formula (4): entail + entail + contradict + neutral = 1 + 1 - 1 + 0 = 1."""
    assert c_score([1, 1, -1, 0]) == 1.0


def test_c_score_rejects_a_value_outside_nli_range() -> None:
    with pytest.raises(FedpktError, match="NLI relation 2"):
        c_score([1, 2])


def test_label_values_reads_names_case_insensitively() -> None:
    """MNLI-style names in any case, and the short 'entail'/'contradict' forms, map to 1/0/-1."""
    assert label_values({0: "ENTAILMENT", 1: "neutral", 2: "Contradiction"}) == {0: 1, 1: 0, 2: -1}
    assert label_values({0: "contradict", 1: "NEUTRAL", 2: "Entail"}) == {0: -1, 1: 0, 2: 1}


def test_label_values_rejects_generic_label_names() -> None:
    """A checkpoint whose config still says LABEL_0.. cannot be read as NLI."""
    with pytest.raises(FedpktError, match="'LABEL_0' \\(class 0\\) is not an NLI label"):
        label_values({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})


def test_label_values_rejects_a_model_without_all_three_relations() -> None:
    with pytest.raises(FedpktError, match="do not cover all three relations"):
        label_values({0: "entailment", 1: "contradiction"})


@pytest.mark.parametrize(("forced_class", "expected"), [(0, -3.0), (1, 0.0), (2, 3.0)])
def test_model_scorer_maps_classes_through_id2label(
    tmp_path: Path, forced_class: int, expected: float
) -> None:
    """A classifier that always answers class k: with ID2LABEL, class 0 = contradiction (-1),
    1 = neutral (0), 2 = entail (+1); three persona sentences give C = -3, 0, 3 per response."""
    model_dir = build_nli_model(tmp_path, ID2LABEL, forced_class=forced_class)
    scorer = NLIModelScorer(model_dir, batch_size=4, device="cpu")
    assert scorer.score(RESPONSES, PERSONA) == [expected] * len(RESPONSES)


def test_model_scorer_equals_argmax_sum_of_unbatched_logits(random_model_dir: Path) -> None:
    """C(u) must equal Σ_j value(argmax logits(u, p_j)) computed one pair at a time here
    (no padding), while the scorer batches 4 padded pairs at a time across responses."""
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(random_model_dir).eval()
    value = {0: -1, 1: 0, 2: 1}  # ID2LABEL read by hand
    expected, seen = [], set()
    with torch.no_grad():
        for response in RESPONSES:
            total = 0
            for sentence in PERSONA.sentences:
                logits = model(**tokenizer(response, sentence, return_tensors="pt")).logits[0]
                top2 = logits.topk(2).values
                assert top2[0] - top2[1] > 1e-3, "near-tie: choose another seed"
                relation = value[int(logits.argmax())]
                seen.add(relation)
                total += relation
            expected.append(float(total))
    assert seen == {-1, 0, 1}, "the random model should give every relation somewhere"

    scorer = NLIModelScorer(random_model_dir, batch_size=4, device="cpu")
    assert scorer.score(RESPONSES, PERSONA) == expected


def test_model_scorer_batch_size_does_not_change_scores(random_model_dir: Path) -> None:
    one = NLIModelScorer(random_model_dir, batch_size=1, device="cpu").score(RESPONSES, PERSONA)
    many = NLIModelScorer(random_model_dir, batch_size=64, device="cpu").score(RESPONSES, PERSONA)
    assert one == many


def test_model_scorer_rejects_unmappable_labels(tmp_path: Path) -> None:
    model_dir = build_nli_model(tmp_path, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(FedpktError, match="'LABEL_0'"):
        NLIModelScorer(model_dir, device="cpu")


def test_model_scorer_names_a_missing_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FedpktError, match="could not be loaded") as info:
        NLIModelScorer(missing, device="cpu")
    assert "\n" not in str(info.value) and str(missing) in str(info.value)


def test_model_scorer_needs_persona_sentences(random_model_dir: Path) -> None:
    scorer = NLIModelScorer(random_model_dir, device="cpu")
    with pytest.raises(FedpktError, match="persona 'anon' has no description sentences"):
        scorer.score(["hi"], Persona(persona_id="anon", sentences=[]))


def test_make_scorer_builds_the_configured_model_backend(random_model_dir: Path) -> None:
    config = EvalConfig(
        c_backend="model", nli_model=str(random_model_dir), nli_batch_size=3, nli_device="cpu"
    )
    scorer = make_scorer(config)
    assert isinstance(scorer, NLIModelScorer)
    assert (scorer.batch_size, scorer.device) == (3, torch.device("cpu"))
    assert isinstance(scorer, ConsistencyScorer)


def test_make_scorer_defaults_to_the_oracle() -> None:
    assert isinstance(make_scorer(EvalConfig()), OracleScorer)


def test_oracle_needs_persona_facts() -> None:
    with pytest.raises(FedpktError, match="persona 'p1' has no facts"):
        OracleScorer().score(["i have a dog"], PERSONA)


ORACLE_PERSONA = Persona(
    persona_id="p2",
    sentences=["i work as a nurse.", "i have a dog.", "i play tennis."],
    facts=(Fact("job", "nurse"), Fact("pet", "dog"), Fact("sport", "tennis")),
)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # job +1, pet +1, sport 0
        ("I work as a nurse and I have a dog!", 2.0),
        # job: teacher is another value of the single-valued slot -> -1
        ("i am a teacher by trade", -1.0),
        # states no catalogue fact -> 0 for every persona fact
        ("hello there, how are you?", 0.0),
        # pet: dog and cat both stated -> contradiction wins, -1
        ("i have a dog. i have a cat.", -1.0),
        # job +1, pet (cat) -1, sport +1
        ("I work as a nurse, I have a cat and I play tennis on weekends", 1.0),
    ],
)
def test_oracle_sums_relations_over_persona_facts(response: str, expected: float) -> None:
    """C(u) = Σ over the persona's three facts of the corpus's exact NLI relation."""
    assert OracleScorer().score([response], ORACLE_PERSONA) == [expected]


def test_oracle_scores_each_response_in_order() -> None:
    """[entail job + pet, contradict job, neutral] -> [2, -1, 0]."""
    responses = ["I work as a nurse and I have a dog!", "i am a teacher by trade", "hi"]
    assert OracleScorer().score(responses, ORACLE_PERSONA) == [2.0, -1.0, 0.0]


def test_backend_none_builds_no_scorer() -> None:
    assert make_scorer(EvalConfig(c_backend="none")) is None
