"""Admission of unauthenticated connections (ratls/admission.py): who is dropped when the listener is full."""

from __future__ import annotations

import logging

import msgspec
import pytest

from cocoon.config import AdmissionConfig, ProxyConfig
from cocoon.ratls.admission import Admission, Pending, source_key


class Conn:
    def __init__(self, admission: Admission, address: str) -> None:
        self.dropped = False
        self.entry: Pending | None = admission.begin(address, self.drop)

    def drop(self) -> None:
        self.dropped = True


def test_one_address_over_its_share_drops_its_own_oldest_handshake() -> None:
    admission = Admission(AdmissionConfig(max_handshakes_per_address=3))
    first = [Conn(admission, "10.0.0.1") for _ in range(3)]
    other = Conn(admission, "10.0.0.2")
    newest = Conn(admission, "10.0.0.1")
    assert [c.dropped for c in first] == [True, False, False]
    assert not other.dropped and not newest.dropped and newest.entry is not None
    assert admission.refused["handshakes_per_address"] == 1
    assert admission.stats()["handshakes_in_progress"] == 4


def test_a_full_listener_drops_the_oldest_handshake_of_the_busiest_address() -> None:
    admission = Admission(AdmissionConfig(max_handshakes=4, max_handshakes_per_address=10))
    honest = Conn(admission, "10.0.0.9")
    flood = [Conn(admission, "10.0.0.1") for _ in range(3)]
    newcomer = Conn(admission, "10.0.0.7")
    assert not honest.dropped and not newcomer.dropped
    assert [c.dropped for c in flood] == [True, False, False]
    assert admission.refused["handshakes_total"] == 1
    assert admission.stats()["handshakes_in_progress"] == 4


def test_a_finished_handshake_frees_its_slot_and_counts_as_a_link_until_closed() -> None:
    admission = Admission(AdmissionConfig(max_handshakes_per_address=1, max_links_per_address=2))
    for _ in range(2):
        conn = Conn(admission, "10.0.0.1")
        assert conn.entry is not None
        admission.end(conn.entry, established=True)
    assert Conn(admission, "10.0.0.1").entry is None  # refused before its handshake
    assert admission.refused["links_per_address"] == 1
    assert Conn(admission, "10.0.0.2").entry is not None  # another address is not affected
    admission.link_closed("10.0.0.1")
    again = Conn(admission, "10.0.0.1")
    assert again.entry is not None and admission.stats()["links"] == 1  # the new one is still in its handshake


def test_an_evicted_or_failed_handshake_is_forgotten_once() -> None:
    admission = Admission(AdmissionConfig(max_handshakes_per_address=1))
    first = Conn(admission, "10.0.0.1")
    second = Conn(admission, "10.0.0.1")
    assert first.dropped and first.entry is not None and first.entry.evicted
    admission.end(first.entry, established=False)  # the evicted handshake then fails by itself
    assert admission.stats()["handshakes_in_progress"] == 1
    assert second.entry is not None
    admission.end(second.entry, established=False)
    assert admission.stats()["handshakes_in_progress"] == 0 and admission.stats()["addresses"] == 0


def test_ipv6_hosts_are_grouped_by_their_64_and_mapped_ipv4_by_its_address() -> None:
    assert source_key(("2001:db8:1:2:aaaa::1", 443, 0, 0)) == source_key(("2001:db8:1:2:bbbb::9", 1, 0, 0))
    assert source_key(("2001:db8:1:2::1", 443, 0, 0)) != source_key(("2001:db8:1:3::1", 443, 0, 0))
    assert source_key(("::ffff:10.0.0.1", 443, 0, 0)) == source_key(("10.0.0.1", 80)) == "10.0.0.1"
    assert source_key(None) == "None"


def test_refusals_are_logged_at_most_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    admission = Admission(AdmissionConfig(max_handshakes_per_address=1), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="cocoon.ratls.admission"):
        for _ in range(5):
            Conn(admission, "10.0.0.1")
        now[0] = 11.0
        Conn(admission, "10.0.0.1")
    lines = [r for r in caplog.records if r.getMessage() == "connection refused before authentication"]
    assert admission.refused["handshakes_per_address"] == 5
    assert [r.fields["not_logged_before"] for r in lines] == [0, 3]  # type: ignore[attr-defined]


def test_limits_are_configurable_and_checked() -> None:
    cfg = msgspec.convert({"name": "p", "admission": {"max_links_per_address": 3}}, ProxyConfig)
    assert cfg.admission.max_links_per_address == 3 and cfg.admission.max_handshakes == 512
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "p", "admission": {"max_handshakes": 0}}, ProxyConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "p", "admission": {"handshake_timeout_s": 0}}, ProxyConfig)
