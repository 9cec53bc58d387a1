"""No timing oracle in token verification: an unknown token and a known token with a wrong
secret cost the same, measured on the frontend's real verifier against a real store.

Lookup is by HMAC digest through the unique index, so nothing about a presented token's
closeness to a stored one reaches the comparison. The test measures interleaved batches and
applies a sign test; a control run with a deliberate 5 % leak proves the test would see one.
"""
from __future__ import annotations

import math
import random
import secrets
import statistics
import time
from collections.abc import Callable

import pytest

from frontend.auth import TokenReader
from helperd.tokenstore import TokenStore

pytestmark = pytest.mark.security
ROUNDS = 400
BATCH = 40
# A sign test over ROUNDS rounds: under "no difference" each round is a coin flip, so the
# count of rounds where class A was slower lies within 4 sigma of ROUNDS/2 (p < 1e-4).
SIGMAS = 4.0


def near_miss(token: str, rng: random.Random) -> str:
    """A known token with one character of its secret changed (the same length and prefix)."""
    i = rng.randrange(4, len(token))
    other = "A" if token[i] != "A" else "B"
    return token[:i] + other + token[i + 1:]


def batch_ns(lookup: Callable[[str], object], tokens: list[str]) -> float:
    start = time.perf_counter_ns()
    for token in tokens:
        lookup(token)
    return (time.perf_counter_ns() - start) / len(tokens)


def sign_test(lookup: Callable[[str], object], a: list[str], b: list[str],
              rng: random.Random) -> tuple[int, float, float]:
    """Rounds where class a was slower, and each class's median per-lookup time (ns)."""
    slower = 0
    times_a: list[float] = []
    times_b: list[float] = []
    for r in range(ROUNDS):
        sample_a, sample_b = rng.sample(a, BATCH), rng.sample(b, BATCH)
        # Alternate the order, so drift and cache warmth favour neither class.
        if r % 2:
            ta, tb = batch_ns(lookup, sample_a), batch_ns(lookup, sample_b)
        else:
            tb, ta = batch_ns(lookup, sample_b), batch_ns(lookup, sample_a)
        slower += ta > tb
        times_a.append(ta)
        times_b.append(tb)
    return slower, statistics.median(times_a), statistics.median(times_b)


def within_chance(slower: int) -> bool:
    return abs(slower - ROUNDS / 2) <= SIGMAS * math.sqrt(ROUNDS) / 2


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenReader, list[str]]:
    state = str(tmp_path_factory.mktemp("tokens"))
    writer = TokenStore(state, gid=0, min_length=20)
    known = [writer.create(None, f"known {i}", "read", None)[1] for i in range(500)]
    return TokenReader(state), known


def test_unknown_and_known_with_a_wrong_secret_take_the_same_time(
        store: tuple[TokenReader, list[str]]) -> None:
    reader, known = store
    rng = random.Random(5)
    unknown = ["lwp_" + secrets.token_urlsafe(32) for _ in range(500)]
    wrong = [near_miss(token, rng) for token in known]
    assert all(reader.lookup(t) is None for t in unknown + wrong)
    assert reader.lookup(known[0]) is not None
    batch_ns(reader.lookup, unknown + wrong)  # warm up
    slower, median_unknown, median_wrong = sign_test(reader.lookup, unknown, wrong, rng)
    print(f"\ntiming: unknown {median_unknown / 1000:.2f} us, known with a wrong secret "
          f"{median_wrong / 1000:.2f} us per lookup; unknown slower in {slower}/{ROUNDS} rounds")
    assert within_chance(slower), (slower, median_unknown, median_wrong)
    assert abs(median_unknown - median_wrong) / median_wrong < 0.05


def test_the_same_measurement_sees_a_five_percent_leak(
        store: tuple[TokenReader, list[str]]) -> None:
    """The control: a verifier that spends 5 % longer on near misses is caught."""
    reader, known = store
    rng = random.Random(6)
    unknown = ["lwp_" + secrets.token_urlsafe(32) for _ in range(500)]
    wrong = set(near_miss(token, rng) for token in known)
    base = statistics.median(batch_ns(reader.lookup, unknown[:BATCH]) for _ in range(50))
    extra = int(base * 0.05)

    def leaky(token: str) -> object:
        found = reader.lookup(token)
        if token in wrong:  # the kind of early exit a naive comparison makes
            until = time.perf_counter_ns() + extra
            while time.perf_counter_ns() < until:
                pass
        return found

    slower, median_unknown, median_wrong = sign_test(leaky, unknown, sorted(wrong), rng)
    print(f"\ncontrol: a {extra} ns leak: unknown slower in {slower}/{ROUNDS} rounds")
    assert not within_chance(slower)
