"""What the pipeline needs from a per-persona PEFT method, and the registry that names them.

A per-persona method turns a frozen causal LM into a persona's model with a few trainable
parameters. Everything in fedpkt that touches those parameters goes through ``PeftMethod``:

- **build**: ``build(model_config, settings, seed)`` -> the trainable module (PEFT-style: built
  from its config). The module maps a batch size to *states* (batch, m, width), float32, one
  row per example, so that opacus sees a batch dimension on every activation (DP-SGD).
- **arrays**: ``arrays(module)`` / ``load_arrays(module, arrays)``, the module's parameters as
  named float32 numpy arrays: what phase 1 sends over Flower, averages and checkpoints.
- **fold**: ``fold(module)`` (or ``fold_arrays(model_config, arrays)``) -> the stored form
  (m, width): what phase 2 keeps in the vault,
  what generation and export use. A method with a reparameterisation (prefix tuning's MLP)
  evaluates it once here; others return their states unchanged.
- **loss inputs**: ``forward(model, input_ids, attention_mask, states)`` runs the backbone on
  (batch, T) tokens, row i under states[i], and returns logits for the T real positions.
- **generation inputs**: ``generation_inputs(model, input_ids, attention_mask, states,
  num_beams)`` -> keyword arguments for HF ``generate``.
- **export**: ``peft_config(model_config, m, base)`` -> the PEFT config whose inference form
  holds the folded states as ``prompt_embeddings`` (``fedpkt.model.export``).

``states=None`` always means the bare backbone, whatever the method (``bare_forward``).

A method registers itself with ``register`` when its module is imported; ``fedpkt.peft``
imports every built-in method. ``[prefix] method`` in the config names the method of a run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
from peft import PeftConfig
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from fedpkt.config import PrefixConfig
from fedpkt.errors import FedpktError
from fedpkt.model.prefix import forward_with_prefix, load_prefix_arrays, prefix_arrays

DEFAULT_METHOD = PrefixConfig.model_fields["method"].default
"""The method a config selects when it names none (the default lives on the config field)."""


class PeftMethod(ABC):
    """One per-persona PEFT method; subclasses are stateless (one instance per registry name).

    Attributes:
        name: the registry name (``[prefix] method``).
        label: how reports name the method, e.g. "Prefix-tuning".
        module_type: the class of the module ``build`` returns (``method_of`` reads it).
    """

    name: str
    label: str
    module_type: type[nn.Module]

    # -- build ------------------------------------------------------------------------------
    @abstractmethod
    def build(self, model_config: Any, settings: PrefixConfig, *, seed: int) -> nn.Module:
        """A freshly initialised trainable module (deterministic in ``seed``, global RNG
        untouched). Calling it with a batch size gives states (batch, m, width)."""

    @abstractmethod
    def width(self, model_config: Any) -> int:
        """Size of one virtual token's stored state for this backbone."""

    def trainable_params(self, model_config: Any, settings: PrefixConfig) -> int:
        """Parameters trained per persona (defaults to the stored size)."""
        return self.stored_params(model_config, settings.num_virtual_tokens)

    def stored_params(self, model_config: Any, num_virtual_tokens: int) -> int:
        """Parameters stored per persona: m · width of the folded form."""
        return num_virtual_tokens * self.width(model_config)

    # -- arrays that travel and fold for storage --------------------------------------------
    def arrays(self, module: nn.Module) -> dict[str, np.ndarray]:
        """The module's parameters as named float32 numpy copies (``named_parameters`` order)."""
        return prefix_arrays(module)

    def load_arrays(self, module: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy validated ``arrays`` into ``module`` (all checked before any is written)."""
        load_prefix_arrays(module, arrays)

    @abstractmethod
    def fold(self, module: nn.Module) -> Tensor:
        """The stored form of ``module``: (m, width), detached float32."""

    @abstractmethod
    def fold_arrays(self, model_config: Any, arrays: Mapping[str, np.ndarray]) -> Tensor:
        """The stored form (m, width) of a module's ``arrays`` (the phase-1 payload), the sizes
        read from the arrays themselves."""

    def check_folded(self, folded: Tensor, model_config: Any, what: str) -> None:
        """One line when ``folded`` is not an (m, width) matrix for this backbone."""
        width = self.width(model_config)
        if folded.dim() != 2 or folded.shape[1] != width or folded.shape[0] < 1:
            raise FedpktError(
                f"{what} has shape {tuple(folded.shape)}; expected (m, {width}) for "
                f"{self.label} on this backbone"
            )

    # -- running the backbone with it -------------------------------------------------------
    @abstractmethod
    def forward(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        states: Tensor,
        labels: Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        """Logits (batch, T, vocab) of ``model`` on (batch, T) tokens, row i under ``states[i]``
        (batch, m, width); right or left padding. ``labels`` (batch, T) as HF takes them."""

    @abstractmethod
    def generation_inputs(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        states: Tensor,
        num_beams: int,
    ) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` on left-padded (rows, T) prompts, row i
        under ``states[i]`` (rows, m, width). ``generate`` repeats its tensor arguments once per
        beam itself, but not a cache: ``num_beams`` is there for methods that pass one. Must
        hold ``input_ids``; generated tokens follow its last column."""

    # -- export -----------------------------------------------------------------------------
    @abstractmethod
    def peft_config(
        self, model_config: Any, num_virtual_tokens: int, base_model_name_or_path: str | None
    ) -> PeftConfig:
        """PEFT's config for the folded form (inference mode): ``PeftModel.from_pretrained``
        with it and ``prompt_embeddings`` = the folded states gives this method's logits."""


def bare_forward(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None
) -> CausalLMOutputWithPast:
    """The backbone alone (position ids count real tokens, as under every method)."""
    return forward_with_prefix(model, input_ids, attention_mask, None, labels)


_REGISTRY: dict[str, PeftMethod] = {}


def register(method: PeftMethod) -> PeftMethod:
    """Add ``method`` under its name (once); returns it, so a module can write
    ``PROMPT = register(PromptTuning())``."""
    if method.name in _REGISTRY:
        raise FedpktError(f"PEFT method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def get_method(name: str | None = None) -> PeftMethod:
    """The registered method called ``name`` (None: the default, prefix tuning)."""
    key = DEFAULT_METHOD if name is None else name
    if key not in _REGISTRY:
        raise FedpktError(f"PEFT method {key!r} is unknown; expected one of {method_names()}")
    return _REGISTRY[key]


def method_of(module: Any) -> PeftMethod:
    """The method whose ``build`` made ``module`` (looks through opacus' GradSampleModule);
    the default method for anything else (None, or a plain states function)."""
    inner = getattr(module, "_module", module)
    for method in _REGISTRY.values():
        if isinstance(inner, method.module_type):
            return method
    return get_method()


def peft_forward(
    method: PeftMethod | None,
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    states: Tensor | None,
    labels: Tensor | None = None,
) -> CausalLMOutputWithPast:
    """``method.forward``, or the bare backbone when ``states`` is None."""
    if states is None:
        return bare_forward(model, input_ids, attention_mask, labels)
    return (method or get_method()).forward(model, input_ids, attention_mask, states, labels)
