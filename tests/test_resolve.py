"""node_ping.probe.resolve: external names to addresses within one time limit, against a resolver that
hangs for real (socket.getaddrinfo replaced in-process by one that blocks until the test lets it answer)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from node_ping.probe.resolve import resolve_all

Answer = list[tuple[Any, ...]]


def _answer(address: str) -> Answer:
    return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_RAW, 0, "", (address, 0))]


class HangingResolver:
    """getaddrinfo() that blocks for `name` until `answer(address)` is called; every other name is
    resolved as usual. A blocked call ends at teardown at the latest."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._release = threading.Event()
        self._address = "192.0.2.1"
        self._real: Callable[..., Answer] = socket.getaddrinfo

    def __call__(self, host: str, *args: Any, **kwargs: Any) -> Answer:
        if host != self.name:
            return self._real(host, *args, **kwargs)
        self._release.wait(60)
        return _answer(self._address)

    def answer(self, address: str) -> None:
        self._address = address
        self._release.set()


def lookup_threads(name: str) -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == f"resolve {name}" and thread.is_alive())


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingResolver]:
    hanging = HangingResolver(f"hangs-{uuid.uuid4().hex}.example")  # look-ups in flight outlive a test
    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        yield hanging
    finally:
        hanging.answer("192.0.2.1")


class TestResolveAll:
    """Addresses of names and IP addresses; failures as sentences."""

    def test_addresses_pass_through_and_localhost_resolves(self) -> None:
        resolved = resolve_all(["2001:db8:0::1", "192.0.2.9", "localhost"], timeout_s=5)
        assert resolved.addresses["2001:db8:0::1"] == "2001:db8::1"
        assert resolved.addresses["192.0.2.9"] == "192.0.2.9"
        assert resolved.addresses["localhost"] in ("127.0.0.1", "::1")
        assert resolved.failures == {}

    def test_unknown_name_is_a_failure(self) -> None:
        resolved = resolve_all(["no-such-host.invalid"], timeout_s=5)
        assert resolved.addresses == {}
        assert resolved.failures["no-such-host.invalid"].startswith("cannot resolve 'no-such-host.invalid'")


class TestHangingResolver:
    """A resolver that never answers costs one thread per name, not one per cycle, and its late
    answer is used by the next cycle."""

    def test_look_ups_do_not_pile_up(self, resolver: HangingResolver) -> None:
        for _cycle in range(20):
            resolved = resolve_all([resolver.name, "192.0.2.9"], timeout_s=0.05)
            assert lookup_threads(resolver.name) <= 1
            assert resolved.addresses == {"192.0.2.9": "192.0.2.9"}
        assert lookup_threads(resolver.name) == 1
        assert resolved.failures == {resolver.name: f"resolving {resolver.name!r} took longer than 0.05 s"}

    def test_the_late_answer_serves_the_next_cycle_once(self, resolver: HangingResolver) -> None:
        assert resolver.name in resolve_all([resolver.name], timeout_s=0.05).failures
        resolver.answer("192.0.2.7")
        assert resolve_all([resolver.name], timeout_s=5).addresses == {resolver.name: "192.0.2.7"}
        resolver.answer("2001:db8::7")  # the resolver is asked again: an old answer is not kept
        assert resolve_all([resolver.name], timeout_s=5).addresses == {resolver.name: "2001:db8::7"}

    def test_a_stop_request_cuts_the_wait_short(self, resolver: HangingResolver) -> None:
        stop = threading.Event()
        stop.set()
        resolved = resolve_all([resolver.name], timeout_s=60, stop=stop)
        assert (resolved.stopped, resolved.failures, resolved.addresses) == (True, {}, {})
