"""Addresses and ports for a launched federation: parse them, pick free ones, probe them.

``fedpkt launch`` binds a SuperLink to ``--host``/``--port`` (or a free port), connects
SuperNodes to it, and with ``--join`` connects to a SuperLink on another machine. These helpers
turn ``HOST:PORT`` text into values and check, before anything is started, that a port can be
bound or an address answers, so that a mistake is one line instead of a dead process. They
touch only sockets, no processes and no files.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from pathlib import Path

from fedpkt.errors import FedpktError


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text.strip())
    if not match:
        raise FedpktError(f"address '{text}' is not HOST:PORT (e.g. 10.0.0.5:9092)")
    host = match[1] or match[3]
    port = int(match[2] or match[4])
    if not 1 <= port <= 65535:
        raise FedpktError(f"address '{text}': port {port} is not in 1-65535")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_host(bind_host: str) -> str:
    """The address a local client uses for a server bound to ``bind_host``."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "localhost") else bind_host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    """Fail with one line when ``port`` cannot be bound on ``host`` (what the server would do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise FedpktError(
                    f"port {port} on {host} is in use (expected a free port; "
                    "leave --port out to pick one)"
                ) from None
            raise FedpktError(f"cannot bind {format_address(host, port)}: {err.strerror}") from None


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail with one line unless a TCP connection to ``address`` opens within ``timeout``."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise FedpktError(
            f"SuperLink address '{address}' is unreachable ({reason}); "
            "expected HOST:PORT of a running SuperLink"
        ) from None


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``port`` of ``host`` right now."""
    try:
        with socket.create_connection((connect_host(host), port), timeout=1.0):
            return True
    except OSError:
        return False


# A Fleet API route of Flower 1.42's SuperLink (FastAPI over HTTP(S)): it takes only POST, so a
# GET is answered 405, where a server without the route says 404 and a non-HTTP one nothing.
_FLEET_ROUTE = "/v1/fleet/pull-messages"


def _fleet_status(sock: socket.socket, host: str) -> int | None:
    """The HTTP status a GET of the Fleet route gets (None: no HTTP reply)."""
    request = f"GET {_FLEET_ROUTE} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    sock.sendall(request.encode("ascii"))
    head = sock.recv(64).decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", head)
    return int(match[1]) if match else None


def check_superlink(address: str, ca_cert: Path | None, timeout: float = 5.0) -> None:
    """One line unless ``address`` answers as a SuperLink does: its Fleet API route exists,
    behind TLS that ``ca_cert`` verifies (None: ``--insecure``, plain HTTP)."""
    check_reachable(address, timeout)
    host, port = parse_address(address)
    expected = "expected HOST:PORT of a running SuperLink"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if ca_cert is None:
                status = _fleet_status(raw, host)
            else:
                context = ssl.create_default_context(cafile=str(ca_cert))
                context.check_hostname = False  # the CA alone vouches (names vary by --tls-name)
                with context.wrap_socket(raw) as tls:
                    status = _fleet_status(tls, host)
    except ssl.SSLError as err:
        reason = err.reason or type(err).__name__
        raise FedpktError(
            f"'{address}' did not complete a TLS handshake verified by '{ca_cert}' ({reason}); "
            f"{expected} and its ca.pem, or --insecure for a SuperLink without TLS"
        ) from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise FedpktError(f"'{address}' did not answer HTTP ({reason}); {expected}") from None
    if status != 405:
        got = f"HTTP {status}" if status else "no HTTP reply"
        tls = "" if status or ca_cert else " (a SuperLink with TLS needs --ca-cert, not --insecure)"
        raise FedpktError(
            f"'{address}' has no SuperLink Fleet API ({got} for {_FLEET_ROUTE}){tls}; {expected}"
        )
