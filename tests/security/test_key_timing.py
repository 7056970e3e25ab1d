"""The time a key check takes says nothing about how much of a guessed key was right.

The measure: many rounds, each with a fresh pair of wrong guesses of one real key, one differing
from it in its first byte (after `sk-`) and one in its last; the two are timed in a random order,
each over a batch of lookups. With no early exit, the guess differing last is the slower one in
about half the rounds (a sign test: a fair coin). An early-exit comparison makes it the slower one
in nearly every round; the same measure run on a deliberately naive comparison shows that it sees
the difference, so its silence about the real lookup means something.

Measured in-process, on `KeyStore.lookup` itself: over the network, the noise of a request
(~100 µs) would hide a difference of nanoseconds and the test could never fail.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.proxy.keys import KeyStore
from shared.apikeys import ApiKey, write_keys

ROUNDS = 1500
# A fair coin over ROUNDS tosses: standard deviation 0.013, so 0.5 +- 0.12 is 9 of them.
FAIR = (0.38, 0.62)
HEX = "0123456789abcdef"


def _other(char: str, rng: random.Random) -> str:
    return rng.choice([c for c in HEX if c != char])


def _changed(real: str, place: int, rng: random.Random) -> str:
    chars = list(real)
    chars[place] = _other(real[place], rng)
    return "".join(chars)


def _guesses(real: str, rng: random.Random) -> tuple[str, str]:
    """Both made the same way, in a random order: the two strings then swap places in memory
    from round to round, so that neither how nor where a string was made can favour one."""
    if rng.random() < 0.5:
        first = _changed(real, 3, rng)
        last = _changed(real, -1, rng)
    else:
        last = _changed(real, -1, rng)
        first = _changed(real, 3, rng)
    return first, last


def later_difference_slower(
    check: Callable[[str], object], reals: list[str], batch: int = 64, seed: int = 7
) -> float:
    """The fraction of rounds in which the guess differing in the last byte took longer.

    Each round guesses one of `reals`, at random: with one key there are only 15 guesses of
    each kind, whose digests may happen to sit on longer chains of the key table, a bias of a
    nanosecond or two that the sign test would see. Each guess is timed twice per round (A B A
    B, or B A B A) and the shorter time kept: a batch the scheduler interrupted says nothing."""
    rng = random.Random(seed)
    slower = 0.0  # a tie counts half
    timer = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(ROUNDS):
            first, last = _guesses(rng.choice(reals), rng)
            order = [("first", first), ("last", last)]
            rng.shuffle(order)
            took = {"first": 1 << 62, "last": 1 << 62}
            for name, guess in order * 2:
                started = timer()
                for _ in range(batch):
                    check(guess)
                took[name] = min(took[name], timer() - started)
            if took["last"] == took["first"]:
                slower += 0.5
            elif took["last"] > took["first"]:
                slower += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return slower / ROUNDS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[KeyStore, list[ApiKey]]]:
    keys = [ApiKey.new(f"user{i}") for i in range(50)]
    path = tmp_path / "apikeys.json"
    write_keys(path, keys)
    store = KeyStore(path)
    store.use(keys)
    assert len(store) == 50
    yield store, keys


def test_key_lookup_time_does_not_depend_on_where_a_guess_goes_wrong(store):
    keystore, keys = store
    real = keys[17].key
    assert keystore.lookup(real) is not None
    first, last = _guesses(real, random.Random(1))
    assert keystore.lookup(first) is None and keystore.lookup(last) is None
    fraction = later_difference_slower(keystore.lookup, [k.key for k in keys])
    assert FAIR[0] < fraction < FAIR[1], f"the last-byte guess was slower in {fraction:.0%}"


def _naive_loop(secrets: list[str]) -> Callable[[str], bool]:
    def check(guess: str) -> bool:
        """What the proxy must not do: compare byte by byte and stop at the first difference."""
        for secret in secrets:
            if len(secret) == len(guess):
                for a, b in zip(secret, guess, strict=True):
                    if a != b:
                        break
                else:
                    return True
        return False

    return check


def _plain_equality(secrets: list[str]) -> Callable[[str], bool]:
    real = secrets[17]
    return lambda guess: guess == real  # memcmp: exits at the first differing byte too


@pytest.mark.parametrize("make", [_naive_loop, _plain_equality])
def test_the_measure_catches_an_early_exit_comparison(store, make):
    _, keys = store
    check = make([k.key for k in keys])
    real = keys[17].key
    assert check(real) and not check(real[:-1] + "x")
    fraction = later_difference_slower(check, [real], batch=16)
    assert fraction > FAIR[1], f"an early exit went unnoticed: {fraction:.0%}"
