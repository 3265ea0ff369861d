"""Specification of fedpkt.privacy.vault: round trip, permissions, and refusal of every tampering.

Tests use tiny scrypt parameters (n=16, r=1) so the byte-by-byte tamper test stays fast; the
format and checks are the same as with the defaults.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from fedpkt.errors import FedpktError
from fedpkt.privacy.vault import (
    MAGIC,
    SECRET_BYTES,
    ScryptParams,
    Vault,
    secret_env_var,
)

FAST = ScryptParams(n=16, r=1, p=1)
FP = "sha256:backbone-a"
PREFIX = (np.arange(12, dtype=np.float32).reshape(3, 4) + 0.123456).astype(np.float32)


def make_vault(tmp_path: Path, client_id: str = "p0001") -> Vault:
    return Vault(tmp_path / client_id / "vault", client_id, scrypt=FAST)


def stored(tmp_path: Path) -> tuple[Vault, Path]:
    vault = make_vault(tmp_path)
    path = vault.store("prefix", {"prefix": PREFIX}, backbone_fingerprint=FP)
    return vault, path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_returns_identical_arrays(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    extra = np.array([1, 2, 3], dtype=np.int64)
    vault.store("prefix", {"prefix": PREFIX, "extra": extra}, backbone_fingerprint=FP)
    out = vault.load("prefix", backbone_fingerprint=FP)
    assert set(out) == {"prefix", "extra"}
    np.testing.assert_array_equal(out["prefix"], PREFIX)
    assert out["prefix"].dtype == np.float32
    np.testing.assert_array_equal(out["extra"], extra)
    assert vault.names() == ["prefix"]


def test_round_trip_of_a_torch_tensor(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    vault = make_vault(tmp_path)
    tensor = torch.tensor(PREFIX, requires_grad=True)
    vault.store("prefix", {"prefix": tensor}, backbone_fingerprint=FP)
    np.testing.assert_array_equal(vault.load("prefix", backbone_fingerprint=FP)["prefix"], PREFIX)


def test_vault_file_has_mode_0600(tmp_path: Path) -> None:
    _, path = stored(tmp_path)
    assert mode_of(path) == 0o600


def test_secret_file_has_mode_0600_and_32_bytes(tmp_path: Path) -> None:
    vault, _ = stored(tmp_path)
    assert mode_of(vault.secret_path) == 0o600
    assert len(vault.secret_path.read_bytes()) == SECRET_BYTES


def test_ensure_secret_keeps_an_existing_secret(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    vault.ensure_secret()
    first = vault.secret_path.read_bytes()
    vault.ensure_secret()
    assert vault.secret_path.read_bytes() == first
    assert [p.name for p in vault.folder.iterdir()] == ["secret.key"]  # no temp files left


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    vault, _ = stored(tmp_path)
    vault.secret_path.chmod(0o644)
    with pytest.raises(FedpktError, match="mode 0644; expected 0600"):
        vault.load("prefix", backbone_fingerprint=FP)


def test_wrong_secret_fails_authentication(tmp_path: Path) -> None:
    vault, _ = stored(tmp_path)
    vault.secret_path.write_bytes(bytes(SECRET_BYTES))
    with pytest.raises(FedpktError, match="failed authentication"):
        vault.load("prefix", backbone_fingerprint=FP)


def test_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The id 'p-7' maps to FEDPKT_CLIENT_SECRET_P_7; no secret file is written."""
    assert secret_env_var("p-7") == "FEDPKT_CLIENT_SECRET_P_7"
    monkeypatch.setenv("FEDPKT_CLIENT_SECRET_P_7", "ab" * SECRET_BYTES)
    vault = make_vault(tmp_path, "p-7")
    vault.store("prefix", {"prefix": PREFIX}, backbone_fingerprint=FP)
    assert not vault.secret_path.exists()
    np.testing.assert_array_equal(vault.load("prefix", backbone_fingerprint=FP)["prefix"], PREFIX)
    monkeypatch.setenv("FEDPKT_CLIENT_SECRET_P_7", "cd" * SECRET_BYTES)
    with pytest.raises(FedpktError, match="failed authentication"):
        vault.load("prefix", backbone_fingerprint=FP)


def test_malformed_env_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(secret_env_var("p0001"), "not-hex")
    with pytest.raises(FedpktError, match="FEDPKT_CLIENT_SECRET_P0001 is not 64 hex digits"):
        make_vault(tmp_path).ensure_secret()


def test_missing_secret_is_reported(tmp_path: Path) -> None:
    vault, _ = stored(tmp_path)
    vault.secret_path.unlink()
    with pytest.raises(FedpktError, match=r"secret.key' does not exist"):
        vault.load("prefix", backbone_fingerprint=FP)


def test_every_single_byte_change_is_refused(tmp_path: Path) -> None:
    """Flip each byte (xor 0x01: digits stay digits, so the header stays near-valid; and
    xor 0xFF) one at a time: every variant must raise FedpktError, none may return arrays."""
    vault, path = stored(tmp_path)
    original = path.read_bytes()
    messages: set[str] = set()
    for mask in (0x01, 0xFF):
        for i in range(len(original)):
            tampered = bytearray(original)
            tampered[i] ^= mask
            path.write_bytes(bytes(tampered))
            with pytest.raises(FedpktError) as info:
                vault.load("prefix", backbone_fingerprint=FP)
            assert "\n" not in str(info.value)
            messages.add(str(info.value).split(";")[0])
    path.write_bytes(original)
    np.testing.assert_array_equal(vault.load("prefix", backbone_fingerprint=FP)["prefix"], PREFIX)
    assert any("failed authentication" in m for m in messages)


def test_truncation_at_several_lengths_is_refused(tmp_path: Path) -> None:
    vault, path = stored(tmp_path)
    original = path.read_bytes()
    header_len = int.from_bytes(original[8:12], "big")
    cuts = [0, 3, 7, 8, 11, 12, 12 + header_len // 2, 12 + header_len, 12 + header_len + 6]
    cuts += [len(original) - 17, len(original) - 16, len(original) - 1]
    for cut in cuts:
        path.write_bytes(original[:cut])
        with pytest.raises(FedpktError, match=r"truncated|corrupt header"):
            vault.load("prefix", backbone_fingerprint=FP)


def test_trailing_bytes_are_refused(tmp_path: Path) -> None:
    vault, path = stored(tmp_path)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(FedpktError, match="trailing bytes"):
        vault.load("prefix", backbone_fingerprint=FP)


def test_bad_magic_and_version_are_named(tmp_path: Path) -> None:
    vault, path = stored(tmp_path)
    original = path.read_bytes()
    path.write_bytes(b"XXXXXXX" + original[7:])
    with pytest.raises(FedpktError, match="not a vault file"):
        vault.load("prefix", backbone_fingerprint=FP)
    path.write_bytes(original[:7] + bytes([2]) + original[8:])
    with pytest.raises(FedpktError, match="format version 2; expected 1"):
        vault.load("prefix", backbone_fingerprint=FP)


def test_backbone_fingerprint_mismatch_is_refused(tmp_path: Path) -> None:
    vault, _ = stored(tmp_path)
    with pytest.raises(FedpktError, match="made for backbone 'sha256:backbone-a'; expected 'b2'"):
        vault.load("prefix", backbone_fingerprint="b2")


def test_file_of_another_client_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with the same secret (shared env value), p2 will not accept p1's file."""
    monkeypatch.setenv(secret_env_var("p1"), "11" * SECRET_BYTES)
    monkeypatch.setenv(secret_env_var("p2"), "11" * SECRET_BYTES)
    p1, p2 = make_vault(tmp_path, "p1"), make_vault(tmp_path, "p2")
    p2.folder.mkdir(parents=True)
    p2.path("prefix").write_bytes(
        p1.store("prefix", {"prefix": PREFIX}, backbone_fingerprint=FP).read_bytes()
    )
    with pytest.raises(FedpktError, match="client_id='p1'; expected 'p2'"):
        p2.load("prefix", backbone_fingerprint=FP)


def test_no_plaintext_prefix_bytes_in_the_file(tmp_path: Path) -> None:
    """No 8-byte window of the raw float32 prefix occurs in the file."""
    _, path = stored(tmp_path)
    blob = path.read_bytes()
    raw = PREFIX.tobytes()
    assert not any(raw[i : i + 8] in blob for i in range(len(raw) - 7))


def test_header_is_readable_and_describes_the_prefix(tmp_path: Path) -> None:
    _, path = stored(tmp_path)
    blob = path.read_bytes()
    assert blob.startswith(MAGIC + bytes([1]))
    length = int.from_bytes(blob[8:12], "big")
    header = json.loads(blob[12 : 12 + length])
    assert header["client_id"] == "p0001"
    assert header["tensors"] == {"prefix": {"shape": [3, 4], "dtype": "float32"}}
    assert header["backbone_fingerprint"] == FP
    assert header["kdf"]["n"] == 16 and len(bytes.fromhex(header["kdf"]["salt"])) == 16


def test_each_store_uses_a_fresh_salt_and_nonce(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    a = vault.store("a", {"prefix": PREFIX}, backbone_fingerprint=FP).read_bytes()
    b = vault.store("b", {"prefix": PREFIX}, backbone_fingerprint=FP).read_bytes()
    assert a[-64:] != b[-64:]


def test_unsafe_entry_names_are_refused(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    for name in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(FedpktError, match="vault entry name"):
            vault.store(name, {"prefix": PREFIX}, backbone_fingerprint=FP)


def test_missing_entry_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FedpktError, match="does not exist; expected a stored 'prefix'"):
        make_vault(tmp_path).load("prefix", backbone_fingerprint=FP)


def test_crafted_scrypt_cost_is_bounded() -> None:
    with pytest.raises(FedpktError, match="power of 2"):
        ScryptParams(n=2**30).validate("header")
    with pytest.raises(FedpktError, match="power of 2"):
        ScryptParams(n=1000).validate("header")
