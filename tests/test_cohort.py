"""Cohort training is one-at-a-time training, batched: the equivalence contract (issue 13 §1).

Both tests run in float64, where batching changes nothing but rounding at ~1e-12, so that a
near-tie cannot flip a beam or a stopping epoch; in float32 the same runs drift in the last
bits with the batch shape and, through AdamW's normalised steps and beam search, can end in
other replies.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from fedpkt.config import DataConfig
from fedpkt.data.encoding import pad_token_id
from fedpkt.data.partition import load_client, prepare_partitions
from fedpkt.eval.consistency import make_scorer
from fedpkt.local import LocalClient
from fedpkt.model.backbone import load_backbone
from fedpkt.personalize import PersonaFailure, PersonalizeResult, PersonaTask, personalize_cohort
from fedpkt.train.cohort import CohortJob, train_cohort
from fedpkt.train.loop import LoopSettings
from fedpkt.train.prefix_training import train_prefix
from tests.conftest import tiny_config
from tests.training_fixtures import examples, tiny_model, tiny_prefix, tiny_tokenizer


def _job(model: torch.nn.Module, index: int, n_train: int, n_valid: int) -> CohortJob:
    pool = examples() * 3
    return CohortJob(
        f"p{index}",
        tiny_prefix(model, seed=index).double(),
        pool[index : index + n_train],
        pool[index + 1 :][:n_valid],
        LoopSettings(lr=5e-2, batch_size=2, max_epochs=6, patience=2, seed=100 + index),
    )


def test_cohort_trainer_matches_train_prefix_per_persona() -> None:
    """Five personas (1 to 12 examples, with and without validation) in slots of 3 against
    ``train_prefix`` alone: same steps, stopping epoch and losses, prefixes equal to 1e-10."""
    model = tiny_model().double()
    specs = [(0, 1, 1), (1, 9, 2), (2, 5, 0), (3, 12, 3), (4, 3, 1)]
    jobs = [_job(model, *spec) for spec in specs]
    outcomes = train_cohort(model, jobs, cohort_size=3, pad_id=pad_token_id(tiny_tokenizer()))
    assert list(outcomes) == [job.key for job in jobs]
    early = 0
    for job, spec in zip(jobs, specs, strict=True):
        alone = _job(model, *spec)
        expected = train_prefix(model, alone.prefix, alone.train, alone.valid, alone.settings)
        got = outcomes[job.key].result
        assert got is not None, outcomes[job.key].error
        assert (got.steps, got.best_epoch, got.stopped_early) == (
            expected.steps,
            expected.best_epoch,
            expected.stopped_early,
        )
        early += got.stopped_early
        assert got.valid_losses == pytest.approx(expected.valid_losses, rel=1e-10)
        assert got.train_losses == pytest.approx(expected.train_losses, rel=1e-10)
        for a, b in zip(job.prefix.parameters(), alone.prefix.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert early >= 1, "the cohort should mix personas that stop early with ones that run on"


def test_a_persona_with_no_training_data_fails_alone() -> None:
    model = tiny_model().double()
    jobs = [_job(model, 0, 0, 1), _job(model, 1, 4, 1)]
    outcomes = train_cohort(model, jobs, cohort_size=2, pad_id=pad_token_id(tiny_tokenizer()))
    assert outcomes["p0"].result is None and "0 examples" in (outcomes["p0"].error or "")
    assert outcomes["p1"].result is not None and outcomes["p1"].result.steps > 0


@pytest.fixture(scope="module")
def float64_clients(tmp_path_factory: pytest.TempPathFactory) -> list[LocalClient]:
    """Few-shot (1 training dialogue) and regular (14-15) personas of the default synthetic
    corpus on a float64 copy of the tiny embedded backbone."""
    root = Path(tmp_path_factory.mktemp("cohort")) / "data"
    prepare_partitions(root, DataConfig(scale="default"), 0)
    cfg = tiny_config(data__scale="default", phase2__max_epochs=4, generation__max_new_tokens=10)
    shared = load_backbone("embedded", embedded_size="tiny")
    backbone = dataclasses.replace(shared, model=copy.deepcopy(shared.model).double())
    ids = ["C-0000", "C-0001", "B-0010", "B-0016", "C-0002", "B-0014"]
    return [LocalClient(load_client(root, cid), backbone, cfg) for cid in ids]


def test_personalize_cohort_equals_one_at_a_time(float64_clients: list[LocalClient]) -> None:
    """The whole phase-2 pipeline, cohort of 3 slots vs each persona alone, same seeds: same
    stopping epochs, close prefixes, identical replies and metrics."""
    cfg = float64_clients[0].cfg
    scorer = make_scorer(cfg.eval)
    tasks = [PersonaTask(client, seed=7 + i) for i, client in enumerate(float64_clients)]
    batched = personalize_cohort(
        tasks, None, scorer=scorer, phase2=cfg.phase2.model_copy(update={"cohort_size": 3})
    )
    alone_cfg = cfg.phase2.model_copy(update={"cohort_size": 1})
    for task in tasks:
        cid = task.client.client_id
        alone = personalize_cohort([task], None, scorer=scorer, phase2=alone_cfg)[cid]
        got = batched[cid]
        assert isinstance(got, PersonalizeResult) and isinstance(alone, PersonalizeResult)
        assert got.generated == alone.generated, cid
        torch.testing.assert_close(got.folded, alone.folded, rtol=1e-6, atol=1e-7)
        for key in ("epochs", "best_epoch", "f1", "f1_2gram", "lcs_f1", "c_score"):
            assert got.metrics[key] == alone.metrics[key], (cid, key)
        for key in ("test_loss", "init_test_loss"):
            assert got.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-9), (cid, key)
    epochs = {batched[t.client.client_id].metrics["epochs"] for t in tasks}  # type: ignore[union-attr]
    assert len(epochs) > 1, "personas should stop at different epochs (continuous batching)"


def test_a_failing_persona_leaves_the_others_results(float64_clients: list[LocalClient]) -> None:
    cfg = float64_clients[0].cfg
    broken = copy.copy(float64_clients[1])
    broken.encoded = {**broken.encoded, "train": []}
    tasks = [PersonaTask(float64_clients[0], 1), PersonaTask(broken, 2)]
    out = personalize_cohort(tasks, None, scorer=make_scorer(cfg.eval))
    assert isinstance(out[broken.client_id], PersonaFailure)
    assert "no train responses" in out[broken.client_id].reason  # type: ignore[union-attr]
    assert isinstance(out[float64_clients[0].client_id], PersonalizeResult)
