"""Typed configuration: defaults < TOML file (``--config``) < CLI overrides.

One pydantic model per concern, each field with its help text (as PEFT's configs do), so that
``fedpkt config show`` documents itself. Unknown keys, wrong types and out-of-range values are
rejected with one line that names the dotted key, the value given and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from fedpkt.errors import FedpktError
from fedpkt.section import Section
from fedpkt.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    AnyStrategyParams,
    StrategyParams,
)

# Presets ship inside the package (package data), so an installed wheel has them too.
PRESET_DIR = Path(__file__).resolve().parent / "configs"


# The largest seed: a TOML integer (config.toml is TOML) and a valid torch seed.
MAX_SEED = 2**63 - 1
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,3})$")


def _device_text(key: str, value: str) -> str:
    """A device string of the form fedpkt accepts (whether it exists is checked at run time)."""
    text = value.strip().lower()
    if not _DEVICE.match(text):
        raise ValueError(f"{key}='{value}' is not a device; expected auto, cpu, cuda or cuda:N")
    return text


_Section = Section


class BackboneConfig(_Section):
    name: str = Field(
        "embedded",
        description="'embedded' (built locally on first use), a Hugging Face hub id "
        "(e.g. gpt2-medium) or a local Hugging Face model directory.",
    )
    embedded_size: Literal["tiny", "default"] = Field(
        "default", description="Recipe of the embedded backbone: 'tiny' for tests, 'default' runs."
    )
    embedded_recipe: Literal["dialogue", "prose"] = Field(
        "dialogue",
        description="What the embedded backbone is pretrained on: 'dialogue' (the corpus's own "
        "dialogue layout) or 'prose' (the synthetic world in non-dialogue registers, as GPT-2 "
        "knows English but not PERSONA-CHAT; issue 18, opt-in until it meets its criteria).",
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Backbone compute dtype; prefixes are always trained in float32."
    )

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "backbone.name is empty; expected 'embedded', a hub id or a model directory"
            )
        return value.strip()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return _device_text("backbone.device", value)


PersonachatVariant = Literal["self_original", "self_revised", "both_original", "both_revised"]


class DataConfig(_Section):
    source: Literal["synthetic", "personachat"] = Field(
        "synthetic", description="The embedded synthetic persona corpus, or real PERSONA-CHAT."
    )
    scale: Literal["tiny", "default", "paper"] = Field(
        "default", description="Synthetic corpus size; 'paper' reproduces Table 1 exactly."
    )
    path: str = Field(
        "",
        description="PERSONA-CHAT: a local ParlAI-format file/directory or a Hugging Face "
        "dataset id (used through datasets.load_dataset).",
    )
    revision: str = Field(
        "",
        description="Hugging Face dataset id: the revision to read (empty: main). A dataset "
        "defined by a loading script, which datasets 4+ no longer runs, is read from its "
        "parquet conversion: 'refs/convert/parquet'.",
    )
    data_dir: str = Field(
        "",
        description="Hugging Face dataset: the folder of the repository to read (datasets' "
        "data_dir). In a parquet conversion, the configuration, e.g. 'full'.",
    )
    personachat_variant: PersonachatVariant = Field(
        "self_original",
        description="PERSONA-CHAT ParlAI folder: which files to read, <split>_<variant>.txt "
        "(original or revised personas; both_*: the partner's persona lines are skipped).",
    )
    prepared_dir: str = Field(
        "", description="Prepared client partitions; empty: prepared inside the run directory."
    )
    history_turns: int = Field(
        3, ge=1, le=64, description="Dialogue history window: utterances before the response."
    )
    max_length: int = Field(128, ge=16, le=4096, description="Max tokens of prompt+response.")
    few_shot_threshold: int = Field(
        6,
        ge=2,
        le=1000,
        description="Personas with fewer dialogues than this are few-shot (Part C).",
    )
    part_b_fraction: float = Field(
        0.2846,
        gt=0.0,
        lt=1.0,
        description="Share of regular personas set aside as Part B (300 of 1054 in the paper).",
    )
    canaries: int = Field(
        0, ge=0, le=10000, description="Canary sentences planted per Part A client."
    )


class PrefixConfig(_Section):
    """The per-persona PEFT method and its size (the section keeps the paper's name)."""

    method: str = Field(
        "prefix",
        description="Per-persona PEFT method, a name in the fedpkt.peft registry: 'prefix' "
        "(Li & Liang prefix tuning) or 'prompt' (soft prompt tuning); docs/peft-methods.md.",
    )
    num_virtual_tokens: int = Field(8, ge=1, le=512, description="m: prefix length in tokens.")
    projection_hidden: int = Field(
        512,
        ge=1,
        le=8192,
        description="k: hidden size of Li & Liang's reparameterisation MLP (its size is also "
        "checked against this machine's memory before a run starts).",
    )
    init_std: float = Field(
        0.02, gt=0.0, le=10.0, description="Std of the random init of the prefix embedding."
    )

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        from fedpkt.peft import method_names  # the registry imports torch: only when checked

        if value not in method_names():
            raise ValueError(f"prefix.method is {value!r}; expected one of {method_names()}")
        return value


class Phase1Config(_Section):
    """Source-prefix training. ``strategy`` is its own section, ``[phase1.strategy]``, whose
    ``name`` picks a plug-in of ``fedpkt.strategies`` and whose other keys are that strategy's
    parameters (a key of another strategy is an error).

    Shorthands kept from the flat layout: ``strategy = "base"`` (a name: that strategy with
    its defaults), and a strategy parameter written directly under ``[phase1]`` (``outer_lr``,
    ``mu``, ...; also ``--set phase1.outer_lr=...``) moves into ``[phase1.strategy]``.
    """

    strategy: AnyStrategyParams = Field(
        default_factory=lambda: STRATEGIES[DEFAULT_STRATEGY].Params(),
        description="Source-prefix training strategy: [phase1.strategy] name = "
        + ", ".join(STRATEGIES)
        + " (see docs/strategies.md), with that strategy's parameters.",
    )
    sampling: Literal["uniform", "temperature"] = Field(
        "uniform", description="Client sampling: uniform, or p_i proportional to n_i^(1/T)."
    )
    temperature: float = Field(
        10.0,
        gt=0.0,
        le=1000.0,
        description="T of temperature sampling (phase1.sampling) and of the temperature "
        "strategy's mixing weights.",
    )
    rounds: int = Field(20, ge=1, le=100_000, description="Federated rounds (outer iterations).")
    clients_per_round: int = Field(
        4, ge=1, le=100_000, description="b_out: clients sampled per round."
    )
    min_clients: int = Field(
        1,
        ge=1,
        le=100_000,
        description="A round succeeds while at least this many clients reply validly.",
    )
    inner_steps: int = Field(
        5, ge=1, le=100_000, description="k: local SGD steps per client and round."
    )
    inner_lr: float = Field(
        1e-4, gt=0.0, le=10.0, description="alpha: inner (client) SGD learning rate."
    )
    inner_batch_size: int = Field(2, ge=1, le=4096, description="b_in: inner-loop batch size.")
    eval_clients: int = Field(
        4, ge=0, le=100_000, description="Clients sampled for federated validation."
    )
    client_timeout_s: float = Field(
        600.0, gt=0.0, le=604_800.0, description="Per-round reply timeout (at most a week)."
    )

    @model_validator(mode="before")
    @classmethod
    def _strategy_section(cls, data: Any) -> Any:
        """Accept the shorthands (a strategy name; flat strategy keys) as ``[phase1.strategy]``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        strategy = data.get("strategy", DEFAULT_STRATEGY)
        if isinstance(strategy, str):
            strategy = {"name": strategy}
        elif isinstance(strategy, StrategyParams):
            strategy = strategy.model_dump()
        elif isinstance(strategy, dict):
            strategy = {"name": DEFAULT_STRATEGY, **strategy}
        else:
            return data  # not a section: the field's own check names the problem
        name = strategy["name"]
        if not isinstance(name, str) or name not in STRATEGIES:
            raise ValueError(
                f"phase1.strategy={name!r} is unknown; expected one of {', '.join(STRATEGIES)}"
            )
        owned = set(STRATEGIES[name].Params.model_fields)
        flat = [k for k in data if k not in cls.model_fields and k in _STRATEGY_KEYS]
        for key in [*flat, *strategy]:
            owners = [s for s, c in STRATEGIES.items() if key in c.Params.model_fields]
            if key not in owned and owners:
                where = "phase1." if key in flat else "phase1.strategy."
                raise ValueError(
                    f"{where}{key} does nothing for phase1.strategy='{name}'; it is a "
                    f"parameter of {', '.join(owners)}"
                )
        strategy.update({key: data.pop(key) for key in flat})
        data["strategy"] = strategy
        return data

    def with_strategy(self, name: str) -> Phase1Config:
        """This section with strategy ``name``: its configured parameters when it is the
        configured one, else that strategy's defaults."""
        if self.strategy.name == name:
            return self
        return self.model_copy(update={"strategy": STRATEGIES[name].Params()})


_STRATEGY_KEYS = {
    key for cls in STRATEGIES.values() for key in cls.Params.model_fields if key != "name"
}


class Phase2Config(_Section):
    init: Literal["source", "random"] = Field(
        "source", description="Personalized prefix init: the source prefix, or random."
    )
    lr: float = Field(5e-3, gt=0.0, le=10.0, description="AdamW learning rate.")
    batch_size: int = Field(4, ge=1, le=4096, description="Training batch size.")
    max_epochs: int = Field(
        10, ge=1, le=10_000, description="Epoch cap; early stopping usually ends sooner."
    )
    patience: int = Field(
        2, ge=1, le=10_000, description="Epochs without validation improvement to stop."
    )
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Linear-schedule warmup share.")
    weight_decay: float = Field(0.0, ge=0.0, le=10.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6, description="Gradient clipping norm.")
    max_clients: int = Field(
        0, ge=0, le=10_000_000, description="Personalize at most this many B/C clients."
    )
    cohort_size: int = Field(
        0,
        ge=0,
        le=1024,
        description="Personas a node trains and evaluates together, one backbone pass per "
        "step (each keeps its own prefix, optimizer, schedule and early stopping). 0: by the "
        "backbone's device, 1 on a CPU (compute-bound: batching measured no faster), 32 on a GPU.",
    )
    personas_per_message: int = Field(
        32,
        ge=1,
        le=4096,
        description="Most personas of one node in one phase-2 message; a cohort's free slots "
        "refill from them (continuous batching) and results stream per message. 1: one persona "
        "per message, as on real devices.",
    )

    finetune_lr: float = Field(
        5e-5,
        gt=0.0,
        le=10.0,
        description="AdamW learning rate of the full fine-tuning baselines (whole model, so "
        "far below the prefix lr); batch size, epochs and patience are shared with prefixes.",
    )


class GenerationConfig(_Section):
    num_beams: int = Field(5, ge=1, le=64, description="Beam size (5 in the paper).")
    max_new_tokens: int = Field(24, ge=1, le=4096, description="Longest generated response.")
    length_penalty: float = Field(1.0, ge=-10.0, le=10.0, description="Beam-search length penalty.")
    no_repeat_ngram_size: int = Field(3, ge=0, le=64, description="0 disables the n-gram block.")


class EvalConfig(_Section):
    c_backend: Literal["oracle", "model", "none"] = Field(
        "oracle",
        description="C score: the synthetic corpus's fact oracle, an NLI model, or none (C not "
        "measured: n/a in tables, null in JSON, left out of client replies).",
    )
    nli_model: str = Field("", description="HF sequence-classification NLI model (dir or id).")
    nli_batch_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="(response, persona sentence) pairs per NLI model forward pass.",
    )
    nli_device: str = Field("auto", description="NLI model device: 'auto', 'cpu', 'cuda:N'.")

    @field_validator("nli_device")
    @classmethod
    def _device(cls, value: str) -> str:
        return _device_text("eval.nli_device", value)


class DPConfig(_Section):
    enabled: bool = Field(False, description="DP-SGD (opacus) on client prefix training.")
    epsilon: float = Field(8.0, gt=0.0, le=1e6, description="Target epsilon per client.")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="Target delta.")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6, description="Per-example clipping norm.")
    client_dp: Literal["off", "fixed", "adaptive"] = Field(
        "off",
        description="Client-level DP on phase 1: Flower's server-side fixed/adaptive clipping.",
    )
    client_dp_noise: float = Field(
        1.0, gt=0.0, le=1000.0, description="z: Gaussian noise multiplier of client-level DP."
    )
    client_dp_clip: float = Field(
        0.1,
        gt=0.0,
        le=1e6,
        description="C: clipping norm of W_i - θ (adaptive: its initial value).",
    )
    client_dp_target_quantile: float = Field(
        0.5, ge=0.0, le=1.0, description="Adaptive clipping: share of updates left unclipped."
    )
    client_dp_clip_lr: float = Field(
        0.2, gt=0.0, le=10.0, description="Adaptive clipping: geometric learning rate of C."
    )


class PrivacyConfig(_Section):
    record_payloads: Literal["all", "sampled", "none"] = Field(
        "sampled",
        description="Payload bytes the egress log keeps beside each reply's digests and the "
        "egress mod's own contract check and content scan: 'all'; 'sampled' (replies up to 16 "
        "KiB, every reply of round 1, and any the mod could not check); 'none' (only those). "
        "true/false mean all/none.",
    )

    @field_validator("record_payloads", mode="before")
    @classmethod
    def _payloads_from_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # the setting was a bool before the modes
            return "all" if value else "none"
        return value

    secagg: bool = Field(False, description="Phase 1 through Flower SecAgg+.")
    secagg_num_shares: float = Field(
        1.0, gt=0.0, le=1.0, description="SecAgg+ key shares, as a share of the round's clients."
    )
    secagg_threshold: float = Field(
        0.67, gt=0.0, le=1.0, description="SecAgg+ shares needed to rebuild a key (fraction)."
    )
    secagg_clipping_range: float = Field(
        1.0,
        gt=0.0,
        le=1e6,
        description="SecAgg+ quantizes each W_i - θ entry within ±this value.",
    )


class SimulationConfig(_Section):
    clients_per_node: int = Field(
        16,
        ge=1,
        le=4096,
        description="Personas each virtual SuperNode of `fedpkt simulate` hosts (node p of N "
        "serves manifest clients p, p+N, ...). Flower's Simulation Engine polls every node for "
        "every message in flight, so fewer nodes keep its server thread cheap at paper scale. "
        "Under privacy.secagg every node hosts one client (SecAgg+ runs between nodes).",
    )
    workers: int = Field(
        0, ge=0, le=1024, description="Ray workers (ClientApp processes); 0: one per CPU (max 8)."
    )
    gpus_per_client: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="GPU share Ray reserves for each ClientApp worker, whose backbone then runs "
        "on that GPU (0.25: four workers per GPU; at most 1, a client uses one GPU); 0: workers "
        "see no GPU and run on the CPU.",
    )
    ray_address: str = Field(
        "",
        description="'': start a local Ray instance; 'HOST:PORT': join the Ray cluster whose "
        "head listens there (`ray start --head`). The run directory and data must then be on a "
        "filesystem every node mounts at the same path; the nodes' resources set the workers.",
    )

    @field_validator("ray_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        text = value.strip()
        host, _, port = text.rpartition(":")
        valid = host and " " not in host and "/" not in host and port.isdigit()
        if text and not (valid and 0 < int(port) < 65536):
            raise ValueError(
                f"simulation.ray_address='{value}' is not HOST:PORT of a Ray head (e.g. "
                "10.0.0.1:6379; Ray Client 'ray://' addresses are not supported); '' starts a "
                "local Ray instance"
            )
        return text


class FedpktConfig(_Section):
    """The whole resolved configuration of one run."""

    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seeds every RNG: data, init, sampling, training (0 to 2^63-1).",
    )
    run_root: str = Field("runs", description="Directory under which run directories are made.")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prefix: PrefixConfig = Field(default_factory=PrefixConfig)
    phase1: Phase1Config = Field(default_factory=Phase1Config)
    phase2: Phase2Config = Field(default_factory=Phase2Config)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> FedpktConfig:
        if self.phase1.min_clients > self.phase1.clients_per_round:
            raise ValueError(
                f"phase1.min_clients={self.phase1.min_clients} must be <= "
                f"phase1.clients_per_round={self.phase1.clients_per_round}"
            )
        if self.privacy.secagg and self.dp.client_dp != "off":
            raise ValueError(
                f"dp.client_dp='{self.dp.client_dp}' clips each client update on the server, "
                "which privacy.secagg=true hides; use one of the two"
            )
        gpus, device = self.simulation.gpus_per_client, self.backbone.device.strip().lower()
        if gpus > 0 and device not in ("auto", "cuda", "cuda:0"):
            raise ValueError(
                f"simulation.gpus_per_client={gpus:g} runs each client's backbone on the GPU Ray "
                f"gives it (its cuda:0); backbone.device='{self.backbone.device}' must be auto or "
                "cuda"
            )
        if self.eval.c_backend == "model" and not self.eval.nli_model:
            raise ValueError("eval.nli_model must name an NLI model when eval.c_backend='model'")
        if self.data.source == "personachat" and not self.data.path:
            raise ValueError("data.path must name PERSONA-CHAT files or a dataset id")
        if self.data.source == "personachat" and self.eval.c_backend == "oracle":
            raise ValueError(
                "eval.c_backend='oracle' needs the synthetic corpus; use 'model' (an NLI model) "
                "or 'none' (C not measured) for PERSONA-CHAT"
            )
        return self


@dataclass(frozen=True)
class KeyDoc:
    """One config key as ``fedpkt config keys`` lists it."""

    key: str
    kind: str  # "integer", "number", "true/false", "text" or the allowed values
    low: str  # "" when the key is not numeric
    high: str
    default: Any
    help: str

    @property
    def range(self) -> str:
        return f"{self.low} .. {self.high}" if self.low or self.high else ""


def _number_text(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(info: FieldInfo) -> tuple[str, str]:
    """The (low, high) ends of a field's range from its ``ge``/``gt``/``le``/``lt``."""
    low = high = ""
    for item in info.metadata:
        for name, side, mark in (("ge", 0, ""), ("gt", 0, "> "), ("le", 1, ""), ("lt", 1, "< ")):
            value = getattr(item, name, None)
            if value is None:
                continue
            if side == 0:
                low = mark + _number_text(value)
            else:
                high = mark + _number_text(value)
    return low, high


def _kind(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(str(v) for v in get_args(annotation))
    return {int: "integer", float: "number", bool: "true/false", str: "text"}.get(
        annotation, str(annotation)
    )


def config_keys(model: type[BaseModel] = FedpktConfig, prefix: str = "") -> list[KeyDoc]:
    """Every key of the config (dotted), with its type, range, default and help text."""
    docs: list[KeyDoc] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            docs += config_keys(annotation, f"{prefix}{name}.")
            continue
        if model is Phase1Config and name == "strategy":
            docs += _strategy_keys(f"{prefix}{name}.")
            continue
        low, high = _bounds(info)
        docs.append(
            KeyDoc(
                f"{prefix}{name}",
                _kind(annotation),
                low,
                high,
                info.default,
                info.description or "",
            )
        )
    return docs


def _strategy_keys(prefix: str) -> list[KeyDoc]:
    """``phase1.strategy.name`` and each strategy's parameters, help prefixed by its name."""
    choices = " | ".join(STRATEGIES)
    help_text = "Source-prefix training strategy (docs/strategies.md)."
    docs = [KeyDoc(f"{prefix}name", choices, "", "", DEFAULT_STRATEGY, help_text)]
    for strategy, cls in STRATEGIES.items():
        for doc in config_keys(cls.Params, prefix):
            if doc.key != f"{prefix}name":
                docs.append(
                    KeyDoc(
                        doc.key,
                        doc.kind,
                        doc.low,
                        doc.high,
                        doc.default,
                        f"[{strategy}] {doc.help}",
                    )
                )
    return docs


def privacy_mechanisms(config: Mapping[str, Any]) -> list[str]:
    """Short labels of the privacy mechanisms a config turns on ([] for none).

    Takes a config *dump* (``FedpktConfig.model_dump()`` or a results.json ``config``, which
    may be partial), so that a run's method name and ``fedpkt compare`` describe a run from the
    same source: what the run was configured with, not what its directory is called.
    """
    dp = config.get("dp") or {}
    labels = []
    if dp.get("enabled"):
        labels.append(f"DP-SGD eps={float(dp.get('epsilon', DPConfig().epsilon)):g}")
    if dp.get("client_dp", "off") != "off":
        labels.append(f"client-level DP ({dp['client_dp']})")
    if (config.get("privacy") or {}).get("secagg"):
        labels.append("SecAgg+")
    return labels


def run_method_name(config: FedpktConfig) -> str:
    """How a federated run's results rows name it, e.g. "PersonaPKT (federated, SecAgg+)".

    The setting follows from the phase-2 init (a random-init run *is* Rand init +
    Prefix-tuning, whatever trained before it), then "federated" and the privacy mechanisms,
    so a DP run and its non-DP twin never share a label. Simulation and deployment runs both
    take their name from here.
    """
    from fedpkt.peft import DEFAULT_METHOD, get_method

    method = get_method(config.prefix.method)
    if config.phase2.init == "random":
        setting = f"Rand init + {method.label}"
    else:  # the paper's PersonaPKT is prefix tuning; another method is named beside it
        setting = "PersonaPKT" if method.name == DEFAULT_METHOD else f"PersonaPKT + {method.label}"
    return f"{setting} (" + ", ".join(["federated", *privacy_mechanisms(config.model_dump())]) + ")"


# What a strict-type refusal says instead of pydantic's terse "Input should be ...".
_EXPECTED = {
    "int_type": "expected an integer (such as 3; not true, 3.0 or 1e3)",
    "float_type": "expected a number (such as 0.5; not true)",
    "finite_number": "expected a finite number (not inf or nan)",
    "bool_type": "expected true or false",
    "string_type": "expected a string in quotes",
    "dict_type": "expected a section (a TOML table)",
    "model_type": "expected a section (a TOML table)",
}


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc[:2] == ["phase1", "strategy"] and len(loc) > 3 and loc[2] in STRATEGIES:
        del loc[2]  # the union's tag: phase1.strategy.outer_lr, not ...ppreptile.outer_lr
    key = ".".join(loc) or "config"
    msg = _EXPECTED.get(first["type"], first["msg"].replace("Input should be", "expected"))
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    if "input" in first and first["type"] != "value_error":
        return f"config key '{key}' = {first['input']!r}: {msg}"
    return f"config: {msg.removeprefix('Value error, ')}"


def validate_config(data: dict[str, Any]) -> FedpktConfig:
    """Build a config from a nested dict, raising FedpktError with one line on any problem."""
    try:
        return FedpktConfig.model_validate(data)
    except ValidationError as err:
        raise FedpktError(_format_validation_error(err)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value``; the value is read as a TOML value, else taken as a string."""
    if "=" not in text:
        raise FedpktError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise FedpktError(f"override '{text}' has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _set_nested(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if path[: depth + 1] == ["phase1", "strategy"] and isinstance(child, str):
            child = node[part] = {"name": child}  # strategy = "x" is [phase1.strategy] name = "x"
        if not isinstance(child, dict):
            raise FedpktError(f"config key '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, naming the file in any error."""
    file = Path(path)
    if not file.is_file():
        preset = PRESET_DIR / f"{path}.toml"
        if preset.is_file():
            file = preset
        elif file.exists():  # a directory, or a FIFO that would block the read
            raise FedpktError(f"config file '{path}' is not a regular file (expected a TOML file)")
        else:
            raise FedpktError(f"config file '{path}' does not exist (expected a TOML file)")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise FedpktError(f"config file '{file}' is not valid TOML: {err}") from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> FedpktConfig:
    """Resolve defaults < TOML file < ``section.key=value`` overrides < ``values`` (dotted keys).

    ``path`` may also be a preset name from ``fedpkt/configs/`` (``embedded``, ``paper``).
    """
    data: dict[str, Any] = read_toml(path) if path else {}
    items = [parse_override(text) for text in overrides or []]
    items += [(key.split("."), value) for key, value in (values or {}).items()]
    for key_path, value in items:
        _set_nested(data, key_path, value)
    return validate_config(data)


def load_config_text(text: str) -> FedpktConfig:
    """Parse a resolved config sent as TOML text (how the server ships it to clients)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise FedpktError(f"config text is not valid TOML: {err}") from None
    return validate_config(data)


def config_to_toml(config: FedpktConfig) -> str:
    """The resolved config as TOML text (what is written to every run directory)."""
    return tomli_w.dumps(config.model_dump(mode="json"))
