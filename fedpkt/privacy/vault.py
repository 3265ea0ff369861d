"""A client's encrypted store for its personalized prefix (AES-256-GCM, key from scrypt).

A personalized prefix *is* the persona, in a form a model can use, so it never leaves the
client and is never stored in the clear. Each client owns one vault folder holding a 32-byte
secret (``secret.key``, mode 0600, created on the client and never sent) and its encrypted
files (``<name>.vault``, mode 0600). The secret may instead come from the environment variable
``FEDPKT_CLIENT_SECRET_<CLIENT_ID>`` (64 hex digits; the id upper-cased, other characters
than A-Z0-9 turned into ``_``), e.g. for a client whose disk is not trusted with the secret.

File layout (all integers big-endian)::

    b"FPKTVLT" | version (1 byte) | header length L (4 bytes) | header (L bytes, UTF-8 JSON)
    | nonce (12 bytes) | AES-GCM ciphertext of a safetensors blob | tag (16 bytes)

Everything before the nonce is the AES-GCM associated data, so the header (client id, name,
tensor shapes and dtypes, backbone fingerprint, creation time, scrypt salt and parameters,
payload length) is authenticated although readable: a changed header, nonce, ciphertext or tag,
a wrong secret or a truncated file all fail authentication, and ``load`` returns nothing.
The key is scrypt(secret, salt) with a fresh random salt per file (and a fresh nonce), so a key
is never used twice. Since the secret is 32 random bytes, scrypt's cost is not what protects
it; it only derives independent per-file keys, and its parameters are bounded on load so that a
crafted header cannot make a reader allocate unbounded memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedpkt.atomic import atomic_write_bytes
from fedpkt.errors import FedpktError

MAGIC = b"FPKTVLT"
VERSION = 1
SECRET_FILE = "secret.key"
SECRET_BYTES = 32
SUFFIX = ".vault"
ENV_PREFIX = "FEDPKT_CLIENT_SECRET_"
NONCE_BYTES = 12
TAG_BYTES = 16
SALT_BYTES = 16
_LEN = struct.Struct(">I")
_PREAMBLE = len(MAGIC) + 1 + _LEN.size
_MAX_HEADER = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters: n (CPU/memory cost, a power of 2), r (block size), p (lanes).

    The default n=2**14, r=8 uses 16 MiB and ~50 ms. Loading accepts n up to 2**20 and r·p up
    to 64 (memory 128·n·r bytes, at most 1 GiB), which bounds what a crafted header can demand.
    """

    n: int = 2**14
    r: int = 8
    p: int = 1

    def validate(self, where: str) -> None:
        n, r, p = self.n, self.r, self.p
        ok = all(isinstance(x, int) and not isinstance(x, bool) for x in (n, r, p))
        if not ok or n < 2 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise FedpktError(
                f"{where}: scrypt parameters n={n!r}, r={r!r}, p={p!r}; expected n a power of 2 "
                "in [2, 2**20], 1 <= r <= 32, 1 <= p <= 16"
            )
        if r * p > 64:
            raise FedpktError(f"{where}: scrypt r*p={r * p}; expected at most 64")


def secret_env_var(client_id: str) -> str:
    """The environment variable that may hold ``client_id``'s secret (hex)."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", client_id.upper())


def _to_numpy(name: str, value: Any) -> np.ndarray:
    """A torch tensor or ndarray as a contiguous ndarray (the prefix is float32 by contract)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        try:
            value = value.detach().cpu().numpy()
        except TypeError as err:  # e.g. bfloat16 has no numpy dtype
            raise FedpktError(f"tensor '{name}' cannot be stored: {err}") from None
    if not isinstance(value, np.ndarray):
        raise FedpktError(
            f"tensor '{name}' is a {type(value).__name__}; expected a torch tensor or ndarray"
        )
    if value.dtype.kind not in "fiub":
        raise FedpktError(f"tensor '{name}' has dtype {value.dtype}; expected a numeric dtype")
    return np.ascontiguousarray(value)


class Vault:
    """One client's encrypted prefix store in ``folder`` (created with mode 0700).

    >>> vault = Vault(tmp / "vault", "p0001")                      # doctest: +SKIP
    >>> vault.store("prefix", {"prefix": arr}, backbone_fingerprint="sha256:ab...")
    >>> vault.load("prefix", backbone_fingerprint="sha256:ab...")["prefix"]  # == arr
    """

    def __init__(
        self, folder: str | os.PathLike[str], client_id: str, *, scrypt: ScryptParams | None = None
    ) -> None:
        if not client_id or "\n" in client_id:
            raise FedpktError(f"vault client id {client_id!r}; expected a non-empty one-line id")
        self.folder = Path(folder)
        self.client_id = client_id
        self.scrypt = scrypt or ScryptParams()
        self.scrypt.validate("vault settings")

    # --- the client secret -----------------------------------------------------------------

    @property
    def secret_path(self) -> Path:
        return self.folder / SECRET_FILE

    def ensure_secret(self) -> None:
        """Make sure a secret exists: from the env var, else ``secret.key`` (created if absent).

        Creation writes a temp file (0600), fsyncs it and *links* it into place, so two
        processes racing for the same client cannot overwrite each other's secret.
        """
        if os.environ.get(secret_env_var(self.client_id)) is not None:
            self._secret()
            return
        if not self.secret_path.exists():
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".secret.", suffix=".tmp", dir=self.folder)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(SECRET_BYTES))
                    handle.flush()
                    os.fsync(handle.fileno())
                # FileExistsError: another process made it first, and we use theirs.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, self.secret_path)
            finally:
                os.unlink(tmp)
        self._secret()

    def _secret(self) -> bytes:
        """The client secret (32 bytes), validated; env var first, then ``secret.key``."""
        env = secret_env_var(self.client_id)
        text = os.environ.get(env)
        if text is not None:
            try:
                value = bytes.fromhex(text.strip())
            except ValueError:
                value = b""
            if len(value) != SECRET_BYTES:
                raise FedpktError(
                    f"environment variable {env} is not {2 * SECRET_BYTES} hex digits "
                    f"({SECRET_BYTES} bytes); expected a hex client secret"
                )
            return value
        path = self.secret_path
        if not path.is_file():
            raise FedpktError(
                f"client secret '{path}' does not exist and {env} is not set; expected the "
                "secret this client's vault was created with"
            )
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise FedpktError(
                f"client secret '{path}' has mode {mode:04o}; expected 0600 (readable by its "
                "owner only)"
            )
        value = path.read_bytes()
        if len(value) != SECRET_BYTES:
            raise FedpktError(
                f"client secret '{path}' has {len(value)} bytes; expected {SECRET_BYTES}"
            )
        return value

    def _key(self, salt: bytes, params: ScryptParams) -> bytes:
        kdf = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p)
        return kdf.derive(self._secret())

    # --- files -----------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """Where ``name`` is stored; names are restricted so they cannot escape the folder."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise FedpktError(
                f"vault entry name {name!r}; expected letters, digits, '.', '_' or '-' "
                "(at most 128, not starting with a dot)"
            )
        return self.folder / f"{name}{SUFFIX}"

    def names(self) -> list[str]:
        """Names of the entries in this vault, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.folder.glob(f"*{SUFFIX}"))

    def store(self, name: str, tensors: dict[str, Any], *, backbone_fingerprint: str) -> Path:
        """Encrypt ``tensors`` (torch tensors or ndarrays) as ``<name>.vault``; returns the path.

        The secret is created first if this client has none yet.
        """
        path = self.path(name)
        if not tensors:
            raise FedpktError(f"vault entry '{name}' has no tensors; expected at least one")
        if not isinstance(backbone_fingerprint, str) or not backbone_fingerprint:
            raise FedpktError(
                f"backbone fingerprint {backbone_fingerprint!r}; expected a non-empty string"
            )
        arrays = {str(k): _to_numpy(str(k), v) for k, v in tensors.items()}
        plaintext = st_save(arrays)
        self.ensure_secret()
        salt = secrets.token_bytes(SALT_BYTES)
        header = {
            "format": "fedpkt-vault",
            "client_id": self.client_id,
            "name": name,
            "tensors": {
                k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()
            },
            "backbone_fingerprint": backbone_fingerprint,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cipher": "AES-256-GCM",
            "kdf": {
                "name": "scrypt",
                "salt": salt.hex(),
                "n": self.scrypt.n,
                "r": self.scrypt.r,
                "p": self.scrypt.p,
            },
            "payload_bytes": len(plaintext) + TAG_BYTES,
        }
        header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        aad = MAGIC + bytes([VERSION]) + _LEN.pack(len(header_bytes)) + header_bytes
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self._key(salt, self.scrypt)).encrypt(nonce, plaintext, aad)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return atomic_write_bytes(path, aad + nonce + sealed, mode=0o600)

    def load(self, name: str, *, backbone_fingerprint: str) -> dict[str, np.ndarray]:
        """Decrypt ``<name>.vault`` and return its arrays, or raise one FedpktError line.

        The file must be this client's, of this name, authenticated with this client's secret,
        and made for the backbone ``backbone_fingerprint`` (a prefix is meaningless on another
        backbone). Nothing is returned unless every check passes.
        """
        path = self.path(name)
        if not path.is_file():
            raise FedpktError(f"vault file '{path}' does not exist; expected a stored '{name}'")
        blob = path.read_bytes()
        header, aad, rest = _split(blob, path)
        salt, params = _kdf_of(header, path)
        nonce, sealed = rest[:NONCE_BYTES], rest[NONCE_BYTES:]
        try:
            plaintext = AESGCM(self._key(salt, params)).decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise FedpktError(
                f"vault file '{path}' failed authentication; expected it to be sealed with this "
                "client's secret and unmodified (wrong secret, or the file was altered)"
            ) from None
        # Authenticated from here on: the remaining mismatches are genuine, not tampering.
        for key, want in (("client_id", self.client_id), ("name", name)):
            if header.get(key) != want:
                raise FedpktError(
                    f"vault file '{path}' has {key}={header.get(key)!r}; expected {want!r}"
                )
        if header.get("backbone_fingerprint") != backbone_fingerprint:
            raise FedpktError(
                f"vault file '{path}' was made for backbone "
                f"{header.get('backbone_fingerprint')!r}; expected {backbone_fingerprint!r}"
            )
        return _unpack(plaintext, header, path)


def _split(blob: bytes, path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """Parse magic, version and header; return (header, associated data, nonce+sealed)."""
    if len(blob) < _PREAMBLE:
        raise FedpktError(
            f"vault file '{path}' is truncated ({len(blob)} bytes); expected at least {_PREAMBLE}"
        )
    if blob[: len(MAGIC)] != MAGIC:
        raise FedpktError(f"vault file '{path}' does not start with {MAGIC!r}; not a vault file")
    version = blob[len(MAGIC)]
    if version != VERSION:
        raise FedpktError(f"vault file '{path}' has format version {version}; expected {VERSION}")
    (length,) = _LEN.unpack_from(blob, len(MAGIC) + 1)
    if length > _MAX_HEADER:
        raise FedpktError(
            f"vault file '{path}' declares a {length}-byte header; expected at most {_MAX_HEADER}"
        )
    end = _PREAMBLE + length
    if len(blob) < end + NONCE_BYTES + TAG_BYTES:
        raise FedpktError(
            f"vault file '{path}' is truncated ({len(blob)} bytes); expected at least "
            f"{end + NONCE_BYTES + TAG_BYTES}"
        )
    try:
        header = json.loads(blob[_PREAMBLE:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FedpktError(f"vault file '{path}' has a corrupt header; expected JSON") from None
    if not isinstance(header, dict):
        raise FedpktError(f"vault file '{path}' header is not a JSON object")
    payload = header.get("payload_bytes")
    have = len(blob) - end - NONCE_BYTES
    if isinstance(payload, int) and have != payload:
        why = "file truncated" if have < payload else "trailing bytes"
        raise FedpktError(
            f"vault file '{path}' has {have} payload bytes; expected {payload} ({why}, or an "
            "altered header)"
        )
    return header, blob[:end], blob[end:]


def _kdf_of(header: dict[str, Any], path: Path) -> tuple[bytes, ScryptParams]:
    """The salt and bounded scrypt parameters named by a (not yet authenticated) header."""
    kdf = header.get("kdf")
    bad = FedpktError(
        f"vault file '{path}' header has no valid 'kdf'; expected scrypt salt, n, r, p"
    )
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise bad
    try:
        salt = bytes.fromhex(kdf["salt"])
        params = ScryptParams(n=kdf["n"], r=kdf["r"], p=kdf["p"])
    except (KeyError, TypeError, ValueError):
        raise bad from None
    if len(salt) < 8:
        raise FedpktError(f"vault file '{path}' has a {len(salt)}-byte salt; expected >= 8")
    params.validate(f"vault file '{path}'")
    return salt, params


def _unpack(plaintext: bytes, header: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    """Decode the safetensors blob and check it against the header's tensor table."""
    try:
        arrays = st_load(plaintext)
    except (SafetensorError, ValueError) as err:
        raise FedpktError(f"vault file '{path}' payload is not safetensors: {err}") from None
    table = header.get("tensors")
    got = {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()}
    if got != table:
        raise FedpktError(f"vault file '{path}' holds tensors {got}; expected the header's {table}")
    return dict(arrays)
