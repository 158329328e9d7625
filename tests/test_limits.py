"""Limits: token buckets and the per-address rate limiter on invented timelines."""

from __future__ import annotations

import pytest

from mimirate.errors import ConfigError
from mimirate.transport.limits import AddressRateLimiter, Limits, TokenBucket


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now_s=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.05)  # half a token refilled
    assert bucket.take(0.1)  # one token after 100 ms at 10/s
    assert not bucket.take(0.1)


def test_token_bucket_ignores_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now_s=100.0)
    assert bucket.take(100.0)
    assert not bucket.take(50.0)
    assert not bucket.take(100.5)
    assert bucket.take(101.0)


def test_rate_limiter_is_per_address_and_bounded() -> None:
    limiter = AddressRateLimiter(rate=1.0, burst=2, max_addresses=3)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)  # another address has its own bucket
    for i in range(100):
        limiter.allow(("spoofed", i), 0.0)
    assert len(limiter) == 3  # memory stays bounded under a flood of addresses
    assert limiter.dropped == 1


def test_limits_validate() -> None:
    with pytest.raises(ConfigError, match="max_sessions"):
        Limits(max_sessions=0)
    with pytest.raises(ConfigError):
        Limits(packets_per_second=0)
