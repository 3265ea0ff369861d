"""Per-persona PEFT methods behind one seam (``PeftMethod``) and their registry.

Importing the package registers the built-in methods: prefix tuning (``prefix``, the default)
and prompt tuning (``prompt``). A new method is one module that subclasses ``PeftMethod`` and
calls ``register``, plus one import line here. See docs/peft-methods.md.
"""

from fedpkt.peft.method import (
    DEFAULT_METHOD,
    PeftMethod,
    bare_forward,
    get_method,
    method_names,
    method_of,
    peft_forward,
    register,
)
from fedpkt.peft.prefix import PREFIX, PrefixTuning
from fedpkt.peft.prompt import PROMPT, PromptTuning, SoftPrompt

__all__ = [
    "DEFAULT_METHOD",
    "PREFIX",
    "PROMPT",
    "PeftMethod",
    "PrefixTuning",
    "PromptTuning",
    "SoftPrompt",
    "bare_forward",
    "get_method",
    "method_names",
    "method_of",
    "peft_forward",
    "register",
]
