"""End to end on the embedded TINY backbone and the tiny synthetic corpus: prefixes learn.

(1) A personalized prefix trained from random init on one Part B persona lowers that persona's
validation loss. (2) A source prefix trained centrally on pooled Part A data (the same loop)
gives a lower mean Part B test loss than a random-init prefix: knowledge transfers.

Observed when written (seed 0, config defaults for the prefix and phase 2): (1) 2.92 -> 2.79
on B-0002; (2) 2.78 (source) vs 2.81 (random) mean over the three Part B personas. The
margins asserted are about half of those. About 20 s on one core, plus the one-off backbone
build (seconds) when the cache is cold.
"""

from __future__ import annotations

import pytest
import torch

from fedpkt.config import DataConfig, FedpktConfig
from fedpkt.data.encoding import EncodedExample, encode_examples
from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.partition import load_client, prepare_partitions
from fedpkt.data.schema import ClientData, Split
from fedpkt.model.backbone import Backbone, load_backbone
from fedpkt.model.prefix import PersonaPrefix, prefix_shape_for
from fedpkt.train.loop import LoopSettings, evaluate_loss
from fedpkt.train.prefix_training import train_prefix

pytestmark = pytest.mark.e2e

CFG = FedpktConfig()
INIT_SEED = 1


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.set_num_threads(1)
    return load_backbone("embedded", embedded_size="tiny", device="cpu", progress=False)


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> dict[str, list[ClientData]]:
    """Parts A and B of the tiny corpus, each client read back from its own folder."""
    root = tmp_path_factory.mktemp("prepared") / "data"
    split = prepare_partitions(root, DataConfig(scale="tiny"), CFG.seed)
    return {
        part: [load_client(root, c.meta["client_id"]) for c in split.part(part)]
        for part in ("A", "B")
    }


def encoded(backbone: Backbone, client: ClientData, split: Split) -> list[EncodedExample]:
    examples = examples_from_dialogues(client.splits[split], CFG.data.history_turns)
    return encode_examples(examples, backbone.tokenizer, CFG.data.max_length)


def random_prefix(backbone: Backbone) -> PersonaPrefix:
    shape = prefix_shape_for(backbone.model.config, CFG.prefix.num_virtual_tokens)
    return PersonaPrefix(
        shape, CFG.prefix.projection_hidden, seed=INIT_SEED, init_std=CFG.prefix.init_std
    )


def test_a_random_init_prefix_learns_one_part_b_persona(backbone, clients):
    """The Part B persona with the most training examples, phase-2 defaults from the config."""
    persona = max(clients["B"], key=lambda c: len(encoded(backbone, c, "train")))
    prefix = random_prefix(backbone)
    phase2 = CFG.phase2
    result = train_prefix(
        backbone,
        prefix,
        encoded(backbone, persona, "train"),
        encoded(backbone, persona, "valid"),
        LoopSettings(
            lr=phase2.lr,
            batch_size=phase2.batch_size,
            max_epochs=phase2.max_epochs,
            patience=phase2.patience,
            seed=CFG.seed,
        ),
    )
    assert result.best_epoch >= 1
    assert result.best_valid_loss < result.initial_valid_loss - 0.05
    kept = evaluate_loss(backbone.model, prefix, encoded(backbone, persona, "valid"))
    assert kept == pytest.approx(result.best_valid_loss, rel=1e-4)


def test_a_source_prefix_trained_on_part_a_transfers_to_part_b(backbone, clients):
    """Pooled Part A train/valid, 5 epochs of the same loop; then Part B test loss, per persona
    averaged over personas, under the source prefix versus an untrained random-init one."""
    pooled_train = [e for c in clients["A"] for e in encoded(backbone, c, "train")]
    pooled_valid = [e for c in clients["A"] for e in encoded(backbone, c, "valid")]
    source = random_prefix(backbone)
    train_prefix(
        backbone,
        source,
        pooled_train,
        pooled_valid,
        LoopSettings(lr=1e-2, batch_size=8, max_epochs=5, patience=2, seed=CFG.seed),
    )
    untrained = random_prefix(backbone)
    tests = [encoded(backbone, c, "test") for c in clients["B"]]

    def mean_test_loss(prefix: PersonaPrefix) -> float:
        return sum(evaluate_loss(backbone.model, prefix, t) for t in tests) / len(tests)

    assert mean_test_loss(source) < mean_test_loss(untrained) - 0.02
