"""The circuits' store in one process (services/proxy/circuit_store.py): a record is read and
changed whole, and what a caller holds is its own copy."""

from __future__ import annotations

from services.proxy.circuit_store import MemoryCircuits, Phase, Record


def test_a_new_name_serves_and_a_change_is_kept_with_its_answer():
    store = MemoryCircuits()
    assert store.read("a") == Record()

    def cool(record: Record) -> bool:
        record.phase, record.failures = Phase.COOLING, record.failures + 1
        return True

    after, answer = store.change("a", cool)
    assert answer and after == Record(Phase.COOLING, 1) == store.read("a")
    assert store.read("b") == Record()  # names are apart


def test_what_a_caller_holds_never_changes_the_store():
    store = MemoryCircuits()
    held = store.read("a")
    held.failures = 9
    after, _ = store.change("a", lambda record: False)
    after.failures = 7
    assert store.read("a").failures == 0
