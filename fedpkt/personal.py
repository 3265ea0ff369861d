"""Using one client's personalized prefix on its own device: open it, chat with it, export it.

Everything here runs where the client's vault is: the prefix is decrypted with the client's own
secret (``vault/secret.key`` or ``FEDPKT_CLIENT_SECRET_<ID>``) and never written in plaintext,
except on purpose by ``export`` (a PEFT adapter for use outside fedpkt).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedpkt.config import GenerationConfig
from fedpkt.data.encoding import render_history
from fedpkt.data.schema import Utterance
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import Backbone, load_backbone_from_config
from fedpkt.model.export import export_method_adapter
from fedpkt.model.generate import generate_replies
from fedpkt.peft import PeftMethod, get_method
from fedpkt.privacy.vault import Vault
from fedpkt.rundir import RunDir

# The vault entry phase 2 writes (clients/app.py stores under this name).
PERSONALIZED_ENTRY = "personalized"


@dataclass
class PersonalPrefix:
    """A decrypted personalized prefix with the backbone it belongs to."""

    client_id: str
    folded: torch.Tensor  # (m, width)
    method: PeftMethod  # the run's ``[prefix] method``
    backbone: Backbone


def open_personal_prefix(run_dir: str | Path, client_id: str) -> PersonalPrefix:
    """Decrypt ``client_id``'s prefix from its vault in ``run_dir`` (checks the backbone)."""
    run = RunDir(Path(run_dir))
    cfg = run.config()
    folder = run.vaults / client_id
    if not folder.is_dir():
        raise FedpktError(f"run '{run.root}' has no vault for persona '{client_id}'")
    backbone = load_backbone_from_config(cfg.backbone, progress=False)
    tensors = Vault(folder, client_id).load(
        PERSONALIZED_ENTRY, backbone_fingerprint=backbone.fingerprint
    )
    folded = torch.from_numpy(tensors["prefix"]).to(backbone.device)
    method = get_method(cfg.prefix.method)
    method.check_folded(folded, backbone.model.config, f"vault prefix of '{client_id}'")
    return PersonalPrefix(client_id, folded, method, backbone)


def check_export_target(out_dir: str | Path, overwrite: bool = False) -> Path:
    """``out_dir`` as an export may use it: new or empty, or anything with ``overwrite``
    (its old files are replaced, never mixed with the adapter's)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FedpktError(f"--out '{out}' is a file; expected a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FedpktError(
            f"--out '{out}' is not empty; expected a new or empty directory, or --overwrite "
            "to replace what it holds"
        )
    return out


def export_personal_prefix(
    run_dir: str | Path, client_id: str, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the persona's prefix as a PEFT adapter directory of the run's method.

    The adapter is written beside ``out_dir`` first and then takes its place, so ``out_dir``
    ends up holding the adapter's files only.
    """
    out = check_export_target(out_dir, overwrite)
    personal = open_personal_prefix(run_dir, client_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        export_method_adapter(
            personal.folded,
            personal.method,
            personal.backbone.model.config,
            str(personal.backbone.path),
            staging,
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@dataclass
class ChatSession:
    """A conversation with one personalized prefix: the user is the partner, it the persona."""

    personal: PersonalPrefix
    history_turns: int
    max_length: int
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    history: list[Utterance] = field(default_factory=list)

    def reply(self, text: str) -> str:
        """Answer one partner line, keeping the dialogue history window the model was trained on."""
        self.history.append(Utterance("partner", text.strip()))
        prompt = render_history(self.history[-self.history_turns :])
        backbone = self.personal.backbone
        (answer,) = generate_replies(
            backbone.model,
            backbone.tokenizer,
            self.personal.folded,
            [prompt],
            self.generation,
            max_length=self.max_length,
            method=self.personal.method,
        )
        self.history.append(Utterance("persona", answer))
        return answer

    def reset(self) -> None:
        self.history.clear()


def chat_session(run_dir: str | Path, client_id: str) -> ChatSession:
    """A chat session with the run's generation settings."""
    cfg = RunDir(Path(run_dir)).config()
    return ChatSession(
        personal=open_personal_prefix(run_dir, client_id),
        history_turns=cfg.data.history_turns,
        max_length=cfg.data.max_length,
        generation=cfg.generation,
    )
