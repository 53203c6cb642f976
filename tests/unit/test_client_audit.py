"""The client's over-charge check on its own (`cocoon.client.audit`), driven by a test clock: request ids, the
log's figures, the deadline of an earlier run's doubt at its boundary, a voucher seen twice (issue 15: tests strong
enough to catch a wrong line)."""

from __future__ import annotations

import logging

import pytest

from cocoon.client.audit import ChargeAudit
from cocoon.ledger.contracts import Tag
from cocoon.ledger.vouchers import Voucher


def voucher(seqno: int, amount: int) -> Voucher:
    return Voucher(int(Tag.CHARGE), 0, "ch", seqno, amount, b"")  # the audit trusts what payments verified


def test_a_ticket_names_its_request_until_it_ends() -> None:
    audit = ChargeAudit(clock=lambda: 0.0)
    first, second = audit.begin("req-a"), audit.begin("req-b")
    assert (audit.request_id(first), audit.request_id(second)) == ("req-a", "req-b")
    audit.end(first, seen=True)
    assert (audit.request_id(first), audit.request_id(second)) == ("", "req-b")


def test_each_over_charge_logged_names_the_part_that_is_new(caplog: pytest.LogCaptureFixture) -> None:
    audit = ChargeAudit(clock=lambda: 0.0)
    audit.open("ch", None, inherited_s=None)
    with caplog.at_level(logging.ERROR, logger="cocoon.client.audit"):
        audit.end(audit.begin("r1"), seen=True, channel="ch", cost=10, voucher=voucher(1, 15))  # 5 too many
        audit.end(audit.begin("r2"), seen=True, channel="ch", cost=10, voucher=voucher(2, 40))  # 15 more
    fields = [r.fields for r in caplog.records if r.name == "cocoon.client.audit"]  # type: ignore[attr-defined]
    assert [(f["request_id"], f["unexplained_nanoton"], f["newly_unexplained_nanoton"]) for f in fields] == [
        ("r1", 5, 5), ("r2", 20, 15)]
    assert (audit.overcharges, audit.unexplained_nanoton) == (2, 20)


def test_a_voucher_arriving_exactly_at_the_deadline_ends_an_earlier_runs_doubt() -> None:
    """The earlier run's requests were charged before their deadline (10 s): a voucher arriving at that very
    instant, checked exactly, holds all of them."""
    now = [0.0]
    audit = ChargeAudit(clock=lambda: now[0])
    audit.open("ch", None, inherited_s=10)
    now[0] = 10.0
    audit.end(audit.begin("r1"), seen=True, channel="ch", cost=10, voucher=voucher(1, 25))
    assert audit.settled and (audit.overcharges, audit.unexplained_nanoton) == (0, 15)


def test_a_voucher_seen_again_after_the_deadline_does_not_end_the_doubt() -> None:
    """Voucher #1 arrived before the earlier run's deadline, so charges of that run may follow it. The same voucher
    carried again by a later answer is no newer: it must not pass for a voucher arriving after the deadline."""
    now = [1.0]
    audit = ChargeAudit(clock=lambda: now[0])
    audit.open("ch", None, inherited_s=10)
    audit.end(audit.begin("r1"), seen=True, channel="ch", cost=5, voucher=voucher(1, 105))
    now[0] = 20.0
    audit.end(audit.begin("r2"), seen=True, channel="ch", cost=0, voucher=voucher(1, 105))
    assert not audit.settled and (audit.overcharges, audit.unexplained_nanoton) == (0, 100)


def test_an_answer_carrying_the_very_voucher_checked_keeps_the_check_exact() -> None:
    """Past the earlier run's deadline, answers A and B: both carry voucher #1 (B was settled in it too), so the
    check of #1 counts only answers it holds: it is exact, and ends the earlier run's doubt."""
    now = [0.0]
    audit = ChargeAudit(clock=lambda: now[0])
    audit.open("ch", None, inherited_s=10)
    now[0] = 20.0
    a, b = audit.begin("a"), audit.begin("b")
    audit.end(a, seen=True, channel="ch", cost=5, voucher=voucher(1, 112))
    audit.end(b, seen=True, channel="ch", cost=7, voucher=voucher(1, 112))
    assert audit.settled and (audit.overcharges, audit.unexplained_nanoton) == (0, 100)
