"""PEFT methods behind one seam (``fedpkt.peft``): both methods honour the interface, and prompt
tuning trains, generates, is stored, exports and runs end to end like prefix tuning does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.main import app
from fedpkt.baseline_settings import SETTINGS
from fedpkt.compare import write_comparison
from fedpkt.config import DPConfig, PrefixConfig, load_config, run_method_name
from fedpkt.config import GenerationConfig as GenerationSettings
from fedpkt.data.encoding import pad_token_id
from fedpkt.errors import FedpktError
from fedpkt.model.adapter import load_adapter
from fedpkt.model.backbone_info import backbone_config, backbone_num_params
from fedpkt.model.export import export_method_adapter
from fedpkt.model.generate import first_line, generate_replies, reply_generation_config
from fedpkt.peft import (
    PREFIX,
    PROMPT,
    PeftMethod,
    get_method,
    method_names,
    method_of,
)
from fedpkt.personal import open_personal_prefix
from fedpkt.privacy.vault import ScryptParams, Vault
from fedpkt.report import read_results
from fedpkt.rundir import RunDir
from fedpkt.train.cohort import CohortJob, train_cohort
from fedpkt.train.dp import dp_inner_steps, train_prefix_dp
from fedpkt.train.inner_loop import InnerSettings
from fedpkt.train.loop import LoopSettings, evaluate_loss
from fedpkt.train.prefix_training import train_prefix
from sim.baselines import row_name
from sim.simulate import simulate
from tests.conftest import tiny_config
from tests.test_prefix import VOCAB, tiny_gpt2, tiny_llama
from tests.training_fixtures import examples, parameters_of, tiny_model, tiny_tokenizer

torch.set_num_threads(1)
# Known third-party warnings only, by message; any other FutureWarning is an error (one once hid
# an exported prefix that PEFT's generate dropped).
pytestmark = [
    pytest.mark.filterwarnings("error::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Position ids are not supported:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]

M = 3


def settings(method: str, init_std: float = 0.5) -> PrefixConfig:
    return PrefixConfig(method=method, num_virtual_tokens=M, projection_hidden=8, init_std=init_std)


def build(method: PeftMethod, model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    return method.build(model.config, settings(method.name), seed=seed)


# --- the interface, for every registered method -------------------------------------------------


def test_the_registry_holds_prefix_by_default_and_prompt() -> None:
    assert method_names()[:2] == ["prefix", "prompt"]
    assert get_method() is PREFIX and get_method("prompt") is PROMPT
    with pytest.raises(FedpktError, match="PEFT method 'lora' is unknown"):
        get_method("lora")


@pytest.mark.parametrize("method", [PREFIX, PROMPT], ids=["prefix", "prompt"])
def test_a_method_builds_states_folds_and_round_trips_its_arrays(method: PeftMethod) -> None:
    """tiny GPT-2: hidden 32, 2 layers → prefix width 2·2·32 = 128, prompt width 32."""
    model = tiny_gpt2()
    module = build(method, model)
    width = {"prefix": 128, "prompt": 32}[method.name]
    assert method.width(model.config) == width
    assert method_of(module) is method
    assert tuple(module(5).shape) == (5, M, width)
    folded = method.fold(module)
    assert tuple(folded.shape) == (M, width) and folded.dtype == torch.float32
    assert method.stored_params(model.config, M) == M * width
    assert torch.equal(module(2)[1], folded)  # every row carries the same states

    arrays = method.arrays(module)
    other = build(method, model, seed=2)
    assert not torch.equal(method.fold(other), folded)  # the seed matters
    method.load_arrays(other, arrays)
    assert torch.equal(method.fold(other), folded)
    assert torch.equal(method.fold_arrays(model.config, arrays), folded)
    assert build(method, model, seed=1).state_dict().keys() == module.state_dict().keys()


def test_the_prompt_trains_every_parameter_it_stores() -> None:
    """No reparameterisation: trainable = stored = m · hidden = 3 · 32."""
    model = tiny_gpt2()
    module = build(PROMPT, model)
    assert sum(p.numel() for p in module.parameters()) == 96
    assert PROMPT.trainable_params(model.config, settings("prompt")) == 96
    assert list(PROMPT.arrays(module)) == ["encoder.embedding.weight"]


def test_a_folded_state_of_the_wrong_width_is_one_line() -> None:
    model = tiny_gpt2()
    with pytest.raises(FedpktError, match=r"has shape \(3, 128\); expected \(m, 32\)"):
        PROMPT.check_folded(PREFIX.fold(build(PREFIX, model)), model.config, "vault prompt")


# --- prompt tuning: loss inputs and generation ---------------------------------------------------


def test_prompt_logits_cover_the_real_tokens_and_ignore_left_padding() -> None:
    """A left-padded row gives the logits of the same row unpadded (positions count real
    tokens from m), and the logits have T columns like the bare model's."""
    model = tiny_gpt2()
    states = PROMPT.fold(build(PROMPT, model)).unsqueeze(0)
    ids = torch.randint(0, VOCAB - 1, (1, 5), generator=torch.Generator().manual_seed(0))
    alone = PROMPT.forward(model, ids, torch.ones_like(ids), states).logits
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    batched = PROMPT.forward(model, padded, mask, states).logits
    assert tuple(alone.shape) == (1, 5, VOCAB)
    torch.testing.assert_close(batched[:, 2:], alone, rtol=1e-5, atol=1e-5)


def test_prompt_greedy_generation_is_the_argmax_of_its_forward() -> None:
    """Greedy ``generate`` under the prompt picks, token by token, the argmax of
    ``PROMPT.forward`` on the growing sequence (positions and mask stay aligned)."""
    model, tokenizer = tiny_model(), tiny_tokenizer()
    folded = PROMPT.fold(build(PROMPT, model))
    prompt = "A: hi! how are you today?\nB:"
    reply = generate_replies(
        model,
        tokenizer,
        folded,
        [prompt],
        GenerationSettings(num_beams=1, max_new_tokens=5),
        method=PROMPT,
    )[0]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    stops = set(tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))) | {0}
    for _ in range(5):
        logits = PROMPT.forward(model, ids, torch.ones_like(ids), folded.unsqueeze(0)).logits
        next_id = int(logits[0, -1].argmax())
        ids = torch.cat([ids, torch.tensor([[next_id]])], 1)
        if next_id in stops:
            break
    expected = tokenizer.decode(ids[0], skip_special_tokens=True)
    assert expected[len(prompt) :].split("\n")[0].strip() == reply


def test_prompt_replies_are_the_same_batched_or_alone_with_beams() -> None:
    model, tokenizer = tiny_model(), tiny_tokenizer()
    prompts = ["A: hi! how are you today?\nB:", "A: any hobbies?\nB:", "A: where?\nB:"]
    states = torch.stack([PROMPT.fold(build(PROMPT, model, seed=s)) for s in (1, 2, 3)])
    batched = generate_replies(
        model,
        tokenizer,
        states,
        prompts,
        GenerationSettings(num_beams=3, max_new_tokens=6),
        method=PROMPT,
    )
    alone = [
        generate_replies(
            model,
            tokenizer,
            states[i],
            [p],
            GenerationSettings(num_beams=3, max_new_tokens=6),
            method=PROMPT,
        )[0]
        for i, p in enumerate(prompts)
    ]
    assert batched == alone


# --- training: the loop, the cohort trainer, DP-SGD ----------------------------------------------


def test_prompt_training_lowers_the_validation_loss() -> None:
    model = tiny_model()
    prompt = build(PROMPT, model)
    data = examples()
    before = evaluate_loss(model, prompt, data)
    result = train_prefix(
        model, prompt, data, data, LoopSettings(lr=0.05, batch_size=2, max_epochs=3, patience=3)
    )
    assert result.best_epoch >= 1
    assert evaluate_loss(model, prompt, data) < before


def test_the_cohort_trainer_trains_prompts_as_train_prefix_does_alone() -> None:
    model = tiny_model().double()
    pool = examples()
    jobs = [
        CohortJob(
            f"p{i}",
            build(PROMPT, model, seed=i).double(),
            pool[i : i + 4],
            pool[i + 4 : i + 6],
            LoopSettings(lr=5e-2, batch_size=2, max_epochs=2, patience=2, seed=i),
        )
        for i in range(2)
    ]
    outcomes = train_cohort(model, jobs, cohort_size=2, pad_id=pad_token_id(tiny_tokenizer()))
    for i, job in enumerate(jobs):
        alone = build(PROMPT, model, seed=i).double()
        expected = train_prefix(model, alone, job.train, job.valid, job.settings)
        got = outcomes[job.key].result
        assert got is not None, outcomes[job.key].error
        assert got.train_losses == pytest.approx(expected.train_losses, rel=1e-10)
        torch.testing.assert_close(PROMPT.fold(job.prefix), PROMPT.fold(alone))


def test_a_cohort_of_mixed_methods_is_refused_in_one_line() -> None:
    model = tiny_model()
    pool = examples()
    jobs = [
        CohortJob(
            f"p{i}",
            build(m, model),
            pool[:2],
            [],
            LoopSettings(lr=0.01, batch_size=2, max_epochs=1, patience=1),
        )
        for i, m in enumerate((PREFIX, PROMPT))
    ]
    with pytest.raises(FedpktError, match=r"mixes PEFT methods \['prefix', 'prompt'\]"):
        train_cohort(model, jobs, cohort_size=2, pad_id=0)


def test_dp_sgd_trains_a_prompt_in_phase_1_and_phase_2() -> None:
    """opacus computes per-example gradients of the prompt's embedding (its batch dimension)."""
    model = tiny_model()
    prompt = build(PROMPT, model)
    before = parameters_of(prompt)["encoder.embedding.weight"]
    inner = dp_inner_steps(
        model, prompt, examples(), DPConfig(enabled=True, epsilon=4.0),
        InnerSettings(lr=0.1, steps=2, batch_size=2, seed=0),
    )  # fmt: skip
    assert 0.0 < inner.epsilon <= 4.0
    assert not torch.equal(parameters_of(prompt)["encoder.embedding.weight"], before)
    private = train_prefix_dp(
        model, prompt, examples(), examples()[:2], DPConfig(enabled=True, epsilon=8.0),
        LoopSettings(lr=0.05, batch_size=2, max_epochs=1, patience=1, max_grad_norm=None),
    )  # fmt: skip
    assert 0.0 < private.epsilon <= 8.0 and private.result.steps >= 1


# --- storage and export --------------------------------------------------------------------------


def test_a_folded_prompt_round_trips_through_the_vault(tmp_path: Path) -> None:
    folded = PROMPT.fold(build(PROMPT, tiny_gpt2()))
    vault = Vault(tmp_path / "vault", "p1", scrypt=ScryptParams(n=16, r=1, p=1))
    vault.store("personalized", {"prefix": folded}, backbone_fingerprint="fp")
    loaded = vault.load("personalized", backbone_fingerprint="fp")["prefix"]
    assert torch.equal(torch.from_numpy(loaded), folded)


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_an_exported_prompt_loads_in_peft_with_the_same_logits(make, tmp_path: Path) -> None:
    """PEFT's prompt-tuning forward prepends the prompt and returns m + T logit columns; its
    last T are ours (right-padded rows: PEFT's default positions are ours). Labels get m
    ignored labels in front, as PEFT does, so the losses agree too."""
    model = make()
    folded = PROMPT.fold(build(PROMPT, model))
    out = export_method_adapter(folded, PROMPT, model.config, "my/backbone", tmp_path / "a")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"]) == ("PROMPT_TUNING", "CAUSAL_LM")
    assert (config["num_virtual_tokens"], config["token_dim"]) == (M, PROMPT.width(model.config))
    assert config["inference_mode"] is True
    assert torch.equal(load_file(out / "adapter_model.safetensors")["prompt_embeddings"], folded)

    ids = torch.randint(0, VOCAB - 1, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    labels = ids.masked_fill(mask == 0, -100)
    ours = PROMPT.forward(model, ids, mask, folded.expand(2, -1, -1), labels=labels)
    peft_model = PeftModel.from_pretrained(model, str(out))
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(theirs.logits[0, M:], ours.logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        theirs.logits[1, M : M + 4], ours.logits[1, :4], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(theirs.loss, ours.loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_an_exported_prompt_generates_fedpkts_reply_through_load_adapter(beams, tmp_path) -> None:
    """PEFT's own generate repeats the prompt at every step (``fedpkt.model.adapter``);
    ``load_adapter`` fixes that, so one unpadded prompt gets ``generate_replies``' reply."""
    model, tokenizer = tiny_model(), tiny_tokenizer()
    folded = PROMPT.fold(build(PROMPT, model))
    prompt = "A: hi! how are you today?\nB:"
    ours = generate_replies(
        model,
        tokenizer,
        folded,
        [prompt],
        GenerationSettings(num_beams=beams, max_new_tokens=6),
        method=PROMPT,
    )
    out = export_method_adapter(folded, PROMPT, model.config, "t", tmp_path / "a")
    peft_model = load_adapter(model, out)
    inputs = tokenizer(prompt, return_tensors="pt")
    config = reply_generation_config(
        tokenizer, GenerationSettings(num_beams=beams, max_new_tokens=6)
    )
    with torch.no_grad():
        tokens = peft_model.generate(**inputs, generation_config=config)
    text = tokenizer.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [first_line(text)] == ours


# --- config and labels ---------------------------------------------------------------------------


def test_the_config_selects_a_method_and_refuses_an_unknown_one() -> None:
    assert load_config("embedded").prefix.method == "prefix"
    assert load_config("embedded", ["prefix.method='prompt'"]).prefix.method == "prompt"
    with pytest.raises(FedpktError, match=r"prefix\.method is 'lora'; expected one of"):
        load_config("embedded", ["prefix.method='lora'"])


def test_a_prompt_run_is_named_apart_from_the_papers_prefix_runs() -> None:
    prefix = load_config("embedded")
    prompt = load_config("embedded", ["prefix.method='prompt'"])
    rand = load_config("embedded", ["prefix.method='prompt'", "phase2.init='random'"])
    assert run_method_name(prefix) == "PersonaPKT (federated)"
    assert run_method_name(prompt) == "PersonaPKT + Prompt-tuning (federated)"
    assert run_method_name(rand) == "Rand init + Prompt-tuning (federated)"


# --- end to end: `fedpkt simulate` with prompt tuning, beside a prefix-tuning run --------------

E2E = {"phase1__rounds": 1, "phase2__max_epochs": 1, "phase2__max_clients": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunDir]:
    """Two reduced runs of the embedded default, one per method (prompt also plants a canary,
    so its exposure is measured under the soft prompt)."""
    root = tmp_path_factory.mktemp("peft-e2e")
    return {
        "prompt": simulate(
            tiny_config(prefix__method="prompt", data__canaries=1, **E2E), root / "prompt"
        ),
        "prefix": simulate(tiny_config(**E2E), root / "prefix"),
    }


def _persona(run: RunDir) -> str:
    return sorted(r["client_id"] for r in run.events("client"))[0]


@pytest.mark.e2e
def test_a_prompt_run_reports_its_own_stored_share(runs: dict[str, RunDir]) -> None:
    """Stored share = m · hidden / backbone parameters (prefix: m · 2 · layers · hidden)."""
    cfg = runs["prompt"].config()
    model_config = backbone_config(cfg.backbone.name, embedded_size=cfg.backbone.embedded_size)
    total = backbone_num_params(cfg.backbone.name, embedded_size=cfg.backbone.embedded_size)
    m, hidden = cfg.prefix.num_virtual_tokens, PROMPT.width(model_config)
    rows = read_results(runs["prompt"].root).rows
    assert {row.method for row in rows} == {"PersonaPKT + Prompt-tuning (federated)"}
    assert {row.part for row in rows} == {"B", "C"}
    for row in rows:
        assert row.stored_params_pct == pytest.approx(100.0 * m * hidden / total)
    assert (runs["prompt"].root / "exposure.json").is_file()


@pytest.mark.e2e
def test_compare_shows_prompt_tuning_next_to_prefix_tuning(
    runs: dict[str, RunDir], tmp_path: Path
) -> None:
    files = write_comparison([runs["prefix"].root, runs["prompt"].root], tmp_path / "cmp")
    rows = {r["setting"]: r for r in json.loads(files.json.read_text())["rows"]}
    assert set(rows) == {"PersonaPKT (PPReptile)", "PersonaPKT (PPReptile) + Prompt-tuning"}
    prefix, prompt = rows["PersonaPKT (PPReptile)"], rows["PersonaPKT (PPReptile) + Prompt-tuning"]
    # tiny embedded backbone: the prefix stores 2 · layers key/value states per token
    assert prefix["stored_params_pct"] > prompt["stored_params_pct"] > 0
    assert "Prompt-tuning" in files.markdown.read_text()


@pytest.mark.e2e
def test_an_exported_vault_prompt_reproduces_the_logits_in_peft(
    runs: dict[str, RunDir], tmp_path: Path
) -> None:
    run = runs["prompt"]
    persona = _persona(run)
    out = tmp_path / "adapter"
    result = CliRunner().invoke(
        app, ["export", str(run.root), "--persona", persona, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    personal = open_personal_prefix(run.root, persona)
    assert personal.method is PROMPT
    model = personal.backbone.model
    ids = personal.backbone.tokenizer("A: hi, how are you?\nB:", return_tensors="pt")
    ours = PROMPT.forward(
        model, ids["input_ids"], ids["attention_mask"], personal.folded.unsqueeze(0)
    ).logits
    peft_model = PeftModel.from_pretrained(model, str(out))
    with torch.no_grad():
        theirs = peft_model(**ids).logits[:, personal.folded.shape[0] :]
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.e2e
def test_chat_answers_under_a_stored_prompt(runs: dict[str, RunDir]) -> None:
    run = runs["prompt"]
    result = CliRunner().invoke(
        app, ["chat", str(run.root), "--persona", _persona(run)], input="hi!\n/quit\n"
    )
    assert result.exit_code == 0, result.output


def test_centralized_prefix_rows_carry_the_method_they_ran() -> None:
    """`fedpkt baselines` keeps the paper's names for prefix tuning; under prompt tuning its
    prefix rows are named like compare's federated prompt rows, the fine-tuning rows as before."""
    prefix = load_config("embedded")
    prompt = load_config("embedded", ["prefix.method='prompt'"])
    assert [row_name(s, prefix) for s in SETTINGS] == [s.method for s in SETTINGS]
    assert [row_name(s, prompt) for s in SETTINGS][3:] == [
        "Reptile + Fine-tuning",
        "Rand init + Prompt-tuning",
        "PersonaPKT (base) + Prompt-tuning",
        "PersonaPKT (temperature) + Prompt-tuning",
        "PersonaPKT (PPReptile) + Prompt-tuning",
    ]
