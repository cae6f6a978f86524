"""Keys, binds and Host headers (helixloom.server.security)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helixloom.errors import HelixloomError
from helixloom.server.security import HostCheck, KeyRing, check_bind, default_label, read_key_file


def test_keys_may_hold_colons_and_bearer_is_case_insensitive() -> None:
    ring = KeyRing.of(["abc:def"])
    assert ring.label("Bearer abc:def") == default_label("abc:def")
    assert ring.label("bearer abc:def") == default_label("abc:def")
    assert ring.label("BEARER   abc:def ") == default_label("abc:def")
    for bad in (None, "", "Bearer", "Bearer def", "Bearer abc", "Basic abc:def", "abc:def"):
        with pytest.raises(PermissionError):
            ring.label(bad)


def test_no_keys_means_no_auth_but_an_empty_key_is_an_error() -> None:
    assert KeyRing.of([]).label(None) is None
    for empty in ("", "  ", " padded ", "schlüssel", "two words"):
        with pytest.raises(HelixloomError, match="non-empty"):
            KeyRing.of([empty])


def test_key_file_with_labels(tmp_path: Path) -> None:
    f = tmp_path / "keys.txt"
    f.write_text("# team\nalice s3:cret\n\nbare-key\n")
    assert read_key_file(f) == {"s3:cret": "alice", "bare-key": default_label("bare-key")}
    f.write_text("# nothing\n")
    with pytest.raises(HelixloomError, match="no keys"):
        read_key_file(f)
    f.write_text("a b c\n")
    with pytest.raises(HelixloomError, match="line 1"):
        read_key_file(f)


def test_network_bind_needs_a_key_unless_allowed_by_name() -> None:
    check_bind("127.0.0.1", KeyRing(), False)
    check_bind("::1", KeyRing(), False)
    check_bind("0.0.0.0", KeyRing.of(["k"]), False)
    check_bind("0.0.0.0", KeyRing(), True)
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(HelixloomError, match="allow-unauthenticated-network"):
            check_bind(host, KeyRing(), False)


def test_host_header_must_name_this_server() -> None:
    loop = HostCheck.for_bind("127.0.0.1")
    for good in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "::1"):
        assert loop.ok(good), good
    for bad in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", None):
        assert not loop.ok(bad), bad
    named = HostCheck.for_bind("0.0.0.0", ["gpu-box.lan"], keyed=True)
    assert named.ok("gpu-box.lan:8000") and not named.ok("evil.example")
    assert HostCheck.for_bind("0.0.0.0", keyed=True).ok("10.0.0.7:8000")  # keyed, no list: any name
    assert not HostCheck.for_bind("0.0.0.0", keyed=False).ok("10.0.0.7:8000")
