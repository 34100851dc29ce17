"""Who may see the status page: the client allow-list, logins from a hashed password file, CSRF.

Every request passes :class:`AccessMiddleware`:

1. the client's address must be this machine's (loopback) or in ``[web] allowed_hosts``;
2. with a ``password_file`` every request needs HTTP Basic credentials that match a line
   ``user:hash`` of it, where the hash is bcrypt (``$2b$...``) or ``pbkdf2_sha256$iterations$
   salt$hash`` (base64, as :func:`hash_password` writes it); the file is read again when it
   changes. Without one (loopback only, as config.py insists) the ``Host`` header must name
   this machine, so that a web page elsewhere cannot reach the status page through DNS
   rebinding;
3. every response carries headers that forbid framing, sniffing, caching and foreign content.

Actions (promote, roll back) also need :meth:`Gate.csrf_token` in their form. A verified
password is remembered as an HMAC under a secret made at start, so bcrypt's cost is paid once
per login, not once per thumbnail.

``python -m bonect.web.auth USER`` reads a password on the terminal and prints the line to add.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import bcrypt
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: Final[tuple[str, ...]] = ("127.0.0.0/8", "::1/128")
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
PBKDF2: Final = "pbkdf2_sha256"
PBKDF2_ITERATIONS: Final = 600_000
USER_KEY: Final = "bonect.user"  # where the middleware leaves the login name in the scope
SECURITY_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        b"default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
)


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A ``pbkdf2_sha256$iterations$salt$hash`` line for the password file."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    encode = base64.b64encode
    return f"{PBKDF2}${iterations}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a bcrypt or PBKDF2 hash; False for an unknown format."""
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode())
        except ValueError:
            return False
    scheme, _, rest = stored.partition("$")
    if scheme != PBKDF2:
        return False
    try:
        iterations, salt, digest = rest.split("$")
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt, validate=True), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def read_password_file(path: Path) -> dict[str, str]:
    """``user:hash`` per line (``#`` comments and blank lines skipped) as a dict."""
    users = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored:
            logger.warning("%s:%d: not user:hash, skipped", path, number)
            continue
        users[user] = stored
    return users


@dataclass
class PasswordFile:
    """The logins of a password file, read again whenever the file changes."""

    path: Path
    _users: dict[str, str] = field(default_factory=dict)
    _stamp: tuple[int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def users(self) -> dict[str, str]:
        """The current ``user -> hash`` map (empty, and logged, if the file cannot be read)."""
        with self._lock:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp:
                    self._users, self._stamp = read_password_file(self.path), stamp
            except OSError as exc:
                logger.error("web password file unreadable, nobody can log in: %s", exc)
                self._users, self._stamp = {}, None
            return self._users


def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """The user and password of an HTTP Basic ``Authorization`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header without its port (``[::1]:8080`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@dataclass
class Gate:
    """The access decisions of one running page: addresses, logins and CSRF tokens.

    Build it with :meth:`build`; ``passwords`` None means loopback only, without logins.
    """

    networks: tuple[Network, ...]
    passwords: PasswordFile | None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _verified: set[bytes] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, allowed_hosts: Sequence[str], password_file: Path | None) -> Gate:
        networks = tuple(
            ipaddress.ip_network(text, strict=False) for text in (*LOOPBACK, *allowed_hosts)
        )
        return cls(networks, None if password_file is None else PasswordFile(password_file))

    def client_allowed(self, address: str | None) -> bool:
        """Whether a client at ``address`` may connect at all."""
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def _mark(self, user: str, password: str) -> bytes:
        return hmac.new(self.secret, f"{user}\0{password}".encode(), "sha256").digest()

    def login(self, authorization: str | None) -> str | None:
        """The user an ``Authorization`` header proves, or None (slow: bcrypt or PBKDF2)."""
        if self.passwords is None:
            return None
        credentials = parse_basic(authorization)
        if credentials is None:
            return None
        user, password = credentials
        stored = self.passwords.users().get(user)
        if stored is None:
            return None
        mark = self._mark(user, f"{stored}\0{password}")  # a changed hash forgets the login
        with self._lock:
            if mark in self._verified:
                return user
        if not verify_password(password, stored):
            logger.warning("web login refused for user %r", user)
            return None
        with self._lock:
            if len(self._verified) > 1024:
                self._verified.clear()
            self._verified.add(mark)
        return user

    def csrf_token(self, user: str) -> str:
        """The token an action's form must carry for ``user``."""
        return hmac.new(self.secret, f"csrf\0{user}".encode(), "sha256").hexdigest()

    def csrf_ok(self, user: str | None, token: str) -> bool:
        return user is not None and hmac.compare_digest(self.csrf_token(user), token)


class AccessMiddleware:
    """Refuses clients off the allow-list (403) and requests without a valid login (401)."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        client = scope.get("client")
        headers = Headers(scope=scope)
        refusal: PlainTextResponse | None = None
        if not self.gate.client_allowed(client[0] if client else None):
            refusal = PlainTextResponse("this address may not see the status page", 403)
        elif self.gate.passwords is None:
            if host_name(headers.get("host", "")) not in LOOPBACK_NAMES:
                refusal = PlainTextResponse("use http://127.0.0.1 or http://localhost", 421)
        else:
            user = await run_in_threadpool(self.gate.login, headers.get("authorization"))
            if user is None:
                refusal = PlainTextResponse(
                    "log in to see the status page",
                    401,
                    headers={"WWW-Authenticate": 'Basic realm="bonect", charset="UTF-8"'},
                )
            else:
                scope[USER_KEY] = user
        if refusal is not None:
            await refusal(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bonect.web.auth USER``: print a password-file line for USER."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or ":" in args[0]:
        print("usage: python -m bonect.web.auth USER  (prints USER:HASH)", file=sys.stderr)
        return 2
    password = os.environ.get("BONECT_WEB_PASSWORD") or getpass.getpass(f"password for {args[0]}: ")
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    print(f"{args[0]}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
