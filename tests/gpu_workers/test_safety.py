"""The pure safety rules: SSRF address policy, X-Robots-Tag parsing, robots.txt semantics."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from gpu_workers.safety import (
    AddressPolicy,
    BlockedAddress,
    GuardedResolver,
    RobotsCache,
    RobotsRules,
    address_block_reason,
    parse_robots,
    user_agent_token,
    x_robots_opt_out,
)

UA = "altlake/0.1 (+https://github.com/altlake/altlake; research)"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("fd00::1", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_block_reason(address: str, reason: str | None):
    assert address_block_reason(ipaddress.ip_address(address)) == reason


def test_allow_list_takes_names_addresses_and_networks():
    policy = AddressPolicy.from_allow_list(["127.0.0.1", "10.8.0.0/16", "Mirror.Internal."])
    policy.check("127.0.0.1", "127.0.0.1")
    policy.check("cdn.example", "10.8.3.4")
    policy.check("mirror.internal", "192.168.1.1")  # the name is trusted whatever it resolves to
    policy.check("example.org", "93.184.216.34")
    with pytest.raises(BlockedAddress, match="loopback"):
        policy.check("localhost", "127.0.0.2")
    with pytest.raises(BlockedAddress, match="private"):
        policy.check("cdn.example", "10.9.0.1")
    with pytest.raises(BlockedAddress, match="link-local"):
        AddressPolicy().check_literal("169.254.169.254")
    AddressPolicy().check_literal("images.example.org")  # names are left to the resolver


class _FixedResolver:
    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    async def resolve(self, host, port=0, family=0):
        return [{"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0} for a in self.answers]

    async def close(self) -> None:
        pass


def test_guarded_resolver_refuses_a_name_with_any_private_answer():
    policy = AddressPolicy()
    public = asyncio.run(GuardedResolver(policy, _FixedResolver(["93.184.216.34"])).resolve("example.org", 80))
    assert [r["host"] for r in public] == ["93.184.216.34"]
    with pytest.raises(BlockedAddress, match="private"):
        asyncio.run(GuardedResolver(policy, _FixedResolver(["93.184.216.34", "10.0.0.1"])).resolve("rebind.example", 80))


def test_user_agent_token():
    assert user_agent_token(UA) == "altlake"
    assert user_agent_token("Mozilla/5.0 (X11)") == "mozilla"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["noai"], "noai"),
        (["noimageai"], "noimageai"),
        (["noindex, nofollow"], "noindex"),
        (["NoImageIndex"], "noimageindex"),
        (["none"], "none"),
        (["altlake: noai"], "altlake: noai"),
        (["otherbot: noindex, nofollow"], None),
        (["otherbot: noindex", "altlake: noimageai"], "altlake: noimageai"),
        (["googlebot: nofollow, altlake: noindex"], "altlake: noindex"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["max-image-preview: large, noai"], "noai"),
        (["nofollow", "noarchive"], None),
        ([], None),
    ],
)
def test_x_robots_opt_out(headers: list[str], expected: str | None):
    assert x_robots_opt_out(headers, UA) == expected


def test_robots_txt_rules_for_our_agent():
    body = b"User-agent: altlake\nDisallow: /no-datasets/\n\nUser-agent: *\nDisallow: /private/\n"
    rules = parse_robots(200, body)
    assert not rules.allows("https://x.org/no-datasets/a.jpg", UA)
    assert rules.allows("https://x.org/private/a.jpg", UA), "our own group replaces the * group"
    assert rules.allows("https://x.org/public/a.jpg", UA)
    star = parse_robots(200, b"User-agent: *\nDisallow: /private/\n")
    assert not star.allows("https://x.org/private/a.jpg", UA)


def test_robots_status_semantics():
    assert parse_robots(404, None).allows("https://x.org/a.jpg", UA), "no robots.txt: everything allowed"
    unreachable = parse_robots(503, b"")
    assert unreachable.failure == "http_5xx" and not unreachable.allows("https://x.org/a.jpg", UA)


def test_robots_cache_fetches_once_per_origin_under_concurrency():
    fetched: list[str] = []

    async def fetch(url: str) -> RobotsRules:
        fetched.append(url)
        await asyncio.sleep(0.01)
        return parse_robots(200, b"User-agent: *\nDisallow: /p/\n")

    async def many() -> list[RobotsRules]:
        cache = RobotsCache(fetch, max_origins=2)
        first = await asyncio.gather(*(cache.rules("http://a.test") for _ in range(20)), cache.rules("http://b.test"))
        await cache.rules("http://c.test")  # evicts a.test, the least recently used
        await cache.rules("http://a.test")
        return first

    rules = asyncio.run(many())
    assert fetched == ["http://a.test/robots.txt", "http://b.test/robots.txt", "http://c.test/robots.txt", "http://a.test/robots.txt"]
    assert len({id(r) for r in rules[:20]}) == 1
