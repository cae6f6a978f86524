"""Who may talk to the server: API keys, the Host header, and which binds are allowed at all.

Safe by default: a server reachable from other machines needs a key unless the operator says
otherwise with a flag that names the risk; an empty key is an error rather than "no auth"; keys are
compared in constant time and may contain any character; the Host header must name this server, so a
web page cannot reach a loopback server through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from helixloom.errors import HelixloomError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
#: The flag that lets a server listen beyond loopback without a key; its name says what it does.
UNAUTHENTICATED_FLAG = "--allow-unauthenticated-network"


def default_label(key: str) -> str:
    """The label stored for a key given without one: a short hash, never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def read_key_file(path: str | Path) -> dict[str, str]:
    """Keys from a file, one per line: ``KEY`` or ``LABEL KEY`` (blank lines and ``#`` comments
    skipped), as key -> label. Keys stay off the command line (and out of ``ps``)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise HelixloomError(f"cannot read the API key file {file}: {exc.strerror or exc}") from exc
    keys: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2:
            raise HelixloomError(f"{file} line {n}: expected KEY or LABEL KEY")
        label, key = (words[0], words[1]) if len(words) == 2 else (default_label(words[0]), words[0])
        keys[check_key(key)] = label
    if not keys:
        raise HelixloomError(f"the API key file {file} has no keys")
    return keys


def check_key(key: str) -> str:
    """``key`` if it can serve as an API key: non-empty printable ASCII without spaces (an empty key is
    an error, not "no auth"; HTTP headers carry Latin-1, so other characters could never match)."""
    if not key or not all("!" <= c <= "~" for c in key):
        raise HelixloomError(
            "an API key must be non-empty printable ASCII without spaces",
            "an unset variable gives an empty --api-key; check $HELIXLOOM_API_KEY",
            param="api_key",
        )
    return key


@dataclass(frozen=True)
class KeyRing:
    """The accepted keys (key -> label). Empty: no key is required."""

    keys: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Iterable[str] = (), labelled: Mapping[str, str] | None = None) -> KeyRing:
        ring = {check_key(k): default_label(k) for k in keys}
        ring.update({check_key(k): label for k, label in (labelled or {}).items()})
        return cls(ring)

    def label(self, authorization: str | None) -> str | None:
        """The label of the request's key (None when no key is required); ``PermissionError`` when
        the key is missing or wrong. ``Bearer`` is matched in any case, as RFC 7235 says."""
        if not self.keys:
            return None
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            raise PermissionError("missing or wrong API key")
        # Digests of equal length: the comparison reveals neither the key nor its length.
        given = hashlib.sha256(token.strip().encode("latin-1", "replace")).digest()
        found = None
        for key, label in self.keys.items():  # every key compared, in constant time
            if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), given):
                found = label
        if found is None:
            raise PermissionError("missing or wrong API key")
        return found


def is_loopback(host: str) -> bool:
    """Whether a bind address (or a Host name) is this machine only."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, ring: KeyRing, allow_unauthenticated: bool) -> None:
    """Refuse to listen beyond loopback without a key, unless the operator allowed it by name."""
    if not ring.keys and not is_loopback(host) and not allow_unauthenticated:
        raise HelixloomError(
            f"--host {host} makes the server reachable from other machines, and no API key is set",
            f"give --api-key or --api-key-file, or pass {UNAUTHENTICATED_FLAG} if you really mean it",
            param="host",
        )


@dataclass(frozen=True)
class HostCheck:
    """The Host header values this server answers to: loopback names, the bound address, and the
    operator's ``--allowed-host`` names (``*`` allows any).

    A keyed server bound beyond loopback with no ``--allowed-host`` answers to any name: it is meant
    to be reached by whatever address the network gives it, and a rebinding page has no key."""

    allowed: frozenset[str]

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = (), *, keyed: bool = False) -> HostCheck:
        extra = [h.lower() for h in extra]
        names = set(LOOPBACK_NAMES) | set(extra)
        if host not in ("0.0.0.0", "::", ""):
            names.add(host.lower())
        if keyed and not extra and not is_loopback(host):
            names.add("*")
        return cls(frozenset(names))

    def ok(self, header: str | None) -> bool:
        if "*" in self.allowed:
            return True
        if not header:
            return False
        name = header.strip().lower()
        if name.startswith("["):  # [::1]:8000
            name = name[: name.find("]") + 1] if "]" in name else name
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        return name in self.allowed or name.strip("[]") in self.allowed
