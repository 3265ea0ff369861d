"""TLS material for a launched federation: a private CA, the SuperLink's certificate, node keys.

Flower's SuperLink serves its Fleet, Control and Runtime APIs over HTTPS by default; SuperNodes
and the ``flwr`` CLI verify it against a CA certificate. ``fedpkt launch`` makes that CA itself
(with ``cryptography``) so that a run is encrypted without the user handling openssl:

- ``ca.pem`` / ``ca.key``: a self-signed CA (the key stays in the run dir, mode 0600, so the
  server certificate can be re-issued when more host names are needed);
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, whose subject
  alternative names always include ``127.0.0.1`` and ``localhost`` (SuperLink's own SuperExec
  connects over loopback) plus any extra names the user gives for other machines;
- ``nodes/supernode-K`` / ``.pub``: optional SuperNode authentication keys (EC P-384, OpenSSH
  format, which is what ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read).

Existing files are reused when they still cover the requested names, so re-launching a run
(``--resume``) or joining from another machine keeps the same CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedpkt.atomic import atomic_write_bytes
from fedpkt.errors import FedpktError

LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "localhost")
VALIDITY_DAYS = 365
# Re-issue a certificate that would expire during a long run rather than fail mid-run.
MIN_REMAINING = dt.timedelta(days=2)


@dataclass(frozen=True)
class TlsFiles:
    """The three files a TLS SuperLink needs; SuperNodes and the CLI need only ``ca_cert``."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """One SuperNode's authentication key pair (OpenSSH format)."""

    private_key: Path
    public_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for IP literals, a DNS SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: Sequence[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def certificate_names(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses (as text) a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips | set(san.get_values_for_type(x509.DNSName))


def _still_valid(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() > MIN_REMAINING


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    cert = _load_cert(folder / "ca.pem")
    try:
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    except (OSError, ValueError):
        return None
    if cert is None or not isinstance(key, ec.EllipticCurvePrivateKey) or not _still_valid(cert):
        return None
    return key, cert


def ensure_certificates(folder: str | Path, extra_names: Sequence[str] = ()) -> TlsFiles:
    """Make (or reuse) a CA and a SuperLink certificate for loopback plus ``extra_names``.

    The CA is reused while it is valid; the server certificate is re-issued whenever it does
    not cover every requested name or is about to expire. Keys are written mode 0600.
    """
    root = Path(folder)
    names = list(dict.fromkeys([*LOOPBACK_NAMES, *(n.strip() for n in extra_names if n.strip())]))
    files = TlsFiles(root / "ca.pem", root / "server.pem", root / "server.key")
    loaded = _load_ca(root)
    if loaded is None:
        ca_key, ca_cert = _make_ca("fedpkt launch CA")
        atomic_write_bytes(root / "ca.key", _key_pem(ca_key), mode=0o600)
        atomic_write_bytes(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        server = None
    else:
        ca_key, ca_cert = loaded
        server = _load_cert(files.server_cert)
    current = (
        server is not None
        and files.server_key.is_file()
        and server.issuer == ca_cert.subject
        and _still_valid(server)
        and set(names) <= certificate_names(server)
    )
    if not current:
        key, cert = _make_server_cert(ca_key, ca_cert, names)
        atomic_write_bytes(files.server_key, _key_pem(key), mode=0o600)
        atomic_write_bytes(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def given_certificates(
    ca_cert: Path | None, server_cert: Path | None, server_key: Path | None
) -> TlsFiles:
    """User-supplied TLS files: all three must be given and be readable PEM files."""
    given = {"--ca-cert": ca_cert, "--server-cert": server_cert, "--server-key": server_key}
    missing = [flag for flag, path in given.items() if path is None]
    if missing:
        raise FedpktError(
            f"TLS files given partly: {', '.join(missing)} missing; "
            "expected all of --ca-cert, --server-cert, --server-key (or none, to generate them)"
        )
    for flag, path in given.items():
        require_pem(flag, path)  # type: ignore[arg-type]
    return TlsFiles(ca_cert, server_cert, server_key)  # type: ignore[arg-type]


def require_pem(flag: str, path: Path) -> Path:
    """Check that ``path`` is a readable PEM file, naming the flag that gave it otherwise."""
    if not path.is_file():
        raise FedpktError(f"{flag} '{path}' does not exist (expected a PEM file)")
    try:
        head = path.read_bytes()[:4096]
    except OSError as err:
        raise FedpktError(f"{flag} '{path}' cannot be read: {err.strerror}") from None
    if b"-----BEGIN " not in head:
        raise FedpktError(f"{flag} '{path}' is not a PEM file (no '-----BEGIN' line)")
    return path


def ensure_node_keys(folder: str | Path, name: str) -> NodeKeys:
    """Make (or reuse) one SuperNode's EC P-384 authentication key pair in OpenSSH format."""
    root = Path(folder)
    keys = NodeKeys(root / name, root / f"{name}.pub")
    if keys.private_key.is_file() and keys.public_key.is_file():
        return keys
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write_bytes(keys.private_key, private, mode=0o600)
    atomic_write_bytes(keys.public_key, public + b"\n")
    return keys
