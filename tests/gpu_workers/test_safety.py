"""The pure safety rules: SSRF address policy, X-Robots-Tag parsing, robots.txt semantics, TDMRep."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from altlake.config import Settings
from gpu_workers.downloader import DownloadConfig
from gpu_workers.safety import (
    ROBOTS_MIN_PARSE_BYTES,
    TDMREP_MAX_BYTES,
    AddressPolicy,
    BlockedAddress,
    GuardedResolver,
    RobotsCache,
    RobotsRules,
    TdmPattern,
    address_block_reason,
    parse_agent_tokens,
    parse_robots,
    parse_tdmrep,
    tdm_header_opt_out,
    tdm_reservation_value,
    tdm_url_path,
    user_agent_token,
    x_robots_opt_out,
)

UA = "altlake/0.1 (+https://github.com/altlake/altlake; research)"
AI = parse_agent_tokens(Settings.ai_crawler_tokens)


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


def test_ai_crawler_tokens_are_one_list_from_the_setting():
    assert AI == ("CCBot", "GPTBot", "Google-Extended", "anthropic-ai", "ClaudeBot", "img2dataset")
    assert DownloadConfig().ai_crawler_tokens == AI, "the downloader's default is the setting's"
    settings = Settings.from_env({"ALTLAKE_AI_CRAWLER_TOKENS": " GPTBot, ,CCBot,GPTBot "})
    assert DownloadConfig.from_settings(settings).ai_crawler_tokens == ("GPTBot", "CCBot")
    assert DownloadConfig.from_settings(settings, ai_crawler_tokens=()).ai_crawler_tokens == (), "an override wins"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["noai"], "noai"),
        (["noimageai"], "noimageai"),
        (["noindex, nofollow"], "noindex"),
        (["NoImageIndex"], "noimageindex"),
        (["none"], "none"),
        (["noml"], "noml"),
        (["NoML, nofollow"], "noml"),
        (["altlake: noai"], "altlake: noai"),
        (["otherbot: noindex, nofollow"], None),
        (["otherbot: noindex", "altlake: noimageai"], "altlake: noimageai"),
        (["img2dataset: noai"], "img2dataset: noai"),  # LAION's opt-out convention
        (["IMG2DATASET: noimageindex, nofollow"], "img2dataset: noimageindex"),
        (["GPTBot: noml"], "gptbot: noml"),  # scoped to an AI-crawler token
        (["somebot: noml"], None),
        (["googlebot: nofollow, altlake: noindex"], "altlake: noindex"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["max-image-preview: large, noai"], "noai"),
        (["nofollow", "noarchive"], None),
        ([], None),
    ],
)
def test_x_robots_opt_out(headers: list[str], expected: str | None):
    assert x_robots_opt_out(headers, UA, AI) == expected


def test_x_robots_scopes_of_ai_tokens_apply_only_when_configured():
    assert x_robots_opt_out(["img2dataset: noai"], UA) is None
    assert x_robots_opt_out(["img2dataset: noai"], UA, ["Img2Dataset"]) == "img2dataset: noai"


def test_robots_txt_rules_for_our_agent():
    body = b"User-agent: altlake\nDisallow: /no-datasets/\n\nUser-agent: *\nDisallow: /private/\n"
    rules = parse_robots(200, body)
    assert not rules.allows("https://x.org/no-datasets/a.jpg", UA)
    assert rules.allows("https://x.org/private/a.jpg", UA), "RFC 9309: our own group replaces the * group for us"
    assert rules.ai_crawler_opt_out("https://x.org/private/a.jpg", AI, UA) is None, "a * group says nothing about AI"
    assert rules.allows("https://x.org/public/a.jpg", UA)
    star = parse_robots(200, b"User-agent: *\nDisallow: /private/\n")
    assert not star.allows("https://x.org/private/a.jpg", UA), "without a group of our own, the * group binds us"
    assert star.ai_crawler_opt_out("https://x.org/private/a.jpg", AI, UA) is None


def test_robots_txt_ai_crawler_groups_opt_out_while_star_allows():
    rules = parse_robots(200, b"User-agent: GPTBot\nDisallow: /\n\nUser-agent: *\nAllow: /\n")
    assert rules.allows("https://x.org/a.jpg", UA), "we fall under the * group, which allows"
    assert rules.ai_crawler_opt_out("https://x.org/a.jpg", AI, UA) == "GPTBot", "a site blocking GPTBot opted out of AI use"
    img2dataset = parse_robots(200, b"User-agent: *\nDisallow:\n\nUser-agent: Img2Dataset\nDisallow: /photos/\n")
    assert img2dataset.ai_crawler_opt_out("https://x.org/photos/a.jpg", AI, UA) == "img2dataset"
    assert img2dataset.ai_crawler_opt_out("https://x.org/logo.png", AI, UA) is None, "only the paths its group disallows"
    assert img2dataset.ai_crawler_opt_out("https://x.org/photos/a.jpg", ["GPTBot"], UA) is None, "only configured tokens"
    shared = parse_robots(200, b"User-agent: CCBot\nUser-agent: ClaudeBot\nDisallow: /art/\n")
    assert shared.ai_crawler_opt_out("https://x.org/art/a.jpg", AI, UA) == "CCBot", "the first configured token that is disallowed"
    assert shared.ai_crawler_opt_out("https://x.org/art/a.jpg", ["ClaudeBot"], UA) == "ClaudeBot"


@pytest.mark.parametrize(
    ("robots", "own"),
    [
        (b"User-agent: *\nDisallow: /\n", False),  # only the fallback group
        (b"", False),  # no groups at all
        (b"User-agent: otherbot\nDisallow: /\n", False),
        (b"User-agent: gptbot\nDisallow: /x\n", True),  # product tokens match case-insensitively
        (b"User-agent: GPTBot\nUser-agent: *\nDisallow: /x\n", True),  # a group shared with *
        (b"User-agent: GPTBot\nAllow: /\n\nUser-agent: *\nDisallow: /\n", True),
        (b"User-agent: GPTBot\n\nUser-agent: *\nDisallow: /\n", True),  # RFC 9309: a blank line ends no group
    ],
)
def test_robots_txt_own_group_of_a_token(robots: bytes, own: bool):
    """Pins what RobotsRules.has_own_group reads from Protego (pinned version), so an upgrade that changes it fails here."""
    rules = parse_robots(200, robots)
    assert rules.has_own_group("GPTBot") is own
    assert RobotsRules(None, "http_5xx").has_own_group("GPTBot") is False


def test_robots_txt_ai_token_own_group_that_allows_overrides_a_star_disallow():
    rules = parse_robots(200, b"User-agent: GPTBot\nAllow: /\n\nUser-agent: *\nDisallow: /private/\n")
    assert rules.ai_crawler_opt_out("https://x.org/private/a.jpg", AI, UA) is None
    assert not rules.allows("https://x.org/private/a.jpg", UA), "we still obey the * group: robots_disallowed"
    joined = parse_robots(200, b"User-agent: GPTBot\n\nUser-agent: *\nDisallow: /\n")  # one group for both agents
    assert joined.ai_crawler_opt_out("https://x.org/a.jpg", AI, UA) == "GPTBot"


def test_robots_txt_ai_token_equal_to_ours_is_left_to_our_own_rule():
    rules = parse_robots(200, b"User-agent: img2dataset\nDisallow: /\n")
    assert not rules.allows("https://x.org/a.jpg", "img2dataset/1.6")
    assert rules.ai_crawler_opt_out("https://x.org/a.jpg", AI, "img2dataset/1.6") is None, "robots_disallowed, not opted out"


# RFC 9309 section 5.1, "Simple Example", with each group's answers worked out by section 2.2.
RFC_SIMPLE_EXAMPLE = b"""User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot
"""


@pytest.mark.parametrize(
    ("agent", "path", "allowed"),
    [
        ("anybot", "/example/page.html", False),  # no group of its own: the * group
        ("anybot", "/images/a.gif", False),  # "*.gif$": wildcard and end anchor
        ("anybot", "/images/a.gif.html", True),
        ("anybot", "/publications/a.gif", True),  # "/publications/" is the longer match
        ("anybot", "/index.html", True),
        ("foobot", "/index.html", False),
        ("foobot", "/example/page.html", True),  # longest match beats "Disallow:/" listed first
        ("foobot", "/example/allowed.gif", True),
        ("foobot", "/example/other.gif", False),
        ("FooBot", "/example/page.html", True),  # product tokens match case-insensitively
        ("barbot", "/example/page.html", False),
        ("bazbot", "/example/page.html", False),  # one group, two user-agent lines
        ("barbot", "/example/other.html", True),  # its own group replaces the * group
        ("barbot", "/a.gif", True),
        ("quxbot", "/example/page.html", True),  # a last group without rules allows everything
    ],
)
def test_robots_txt_rfc_9309_simple_example(agent: str, path: str, allowed: bool):
    assert parse_robots(200, RFC_SIMPLE_EXAMPLE).allows_agent("https://example.com" + path, agent) is allowed


@pytest.mark.parametrize(
    ("body", "path", "allowed"),
    [
        # RFC 9309 section 5.2: the longest match is used, whichever rule comes first.
        (b"Allow: /example/page/\nDisallow: /example/page/disallowed.gif", "/example/page/disallowed.gif", False),
        (b"Allow: /example/page/\nDisallow: /example/page/disallowed.gif", "/example/page/other.gif", True),
        (b"Disallow: /photos/\nAllow: /photos/public/", "/photos/public/a.jpg", True),  # first match would disallow
        (b"Disallow: /photos/\nAllow: /photos/public/", "/photos/private/a.jpg", False),
        (b"Disallow: /a\nAllow: /a", "/a/b.jpg", True),  # equivalent rules: allow wins
        # Section 2.2.3: "$" ends the pattern, "*" is any run of characters.
        (b"Disallow: /\nAllow: /this/path/exactly$", "/this/path/exactly", True),
        (b"Disallow: /\nAllow: /this/path/exactly$", "/this/path/exactly/not", False),
        (b"Disallow: /this/*/exactly", "/this/any/thing/exactly.jpg", False),
        (b"Disallow: /this/*/exactly", "/this/exactly.jpg", True),
        (b"Disallow: /*.png$", "/img/a.png", False),
        (b"Disallow: /*.png$", "/img/a.png.jpg", True),
    ],
)
def test_robots_txt_rfc_9309_matching(body: bytes, path: str, allowed: bool):
    rules = parse_robots(200, b"User-agent: *\n" + body + b"\n")
    assert rules.allows("https://example.com" + path, UA) is allowed


def test_robots_txt_with_a_utf8_bom_is_obeyed():
    rules = parse_robots(200, b"\xef\xbb\xbfUser-agent: *\nDisallow: /private/\n# caf\xe9 \xff\n")
    assert not rules.allows("https://x.org/private/a.jpg", UA), "the BOM must not void the first line"
    assert rules.allows("https://x.org/public/a.jpg", UA)


def test_robots_txt_parse_limit_keeps_500_kib_and_drops_a_cut_line():
    head = b"User-agent: *\nDisallow: /\nAllow: /public/\n"
    rule = b"Disallow: /public/late/\n"
    filler = b"#" * (ROBOTS_MIN_PARSE_BYTES - len(head) - len(rule) - 1) + b"\n"
    near_limit = parse_robots(200, head + filler + rule + b"#" * 100_000)
    assert not near_limit.allows("https://x.org/public/late/a.jpg", UA), "a rule within 500 KiB is obeyed"
    cut = head + b"#" * (ROBOTS_MIN_PARSE_BYTES - len(head) - 9) + b"\nAllow: /photos/a.jpg\n"  # cut after "Allow: /"
    assert cut[:ROBOTS_MIN_PARSE_BYTES].endswith(b"\nAllow: /")
    rules = parse_robots(200, cut, max_bytes=ROBOTS_MIN_PARSE_BYTES)
    assert not rules.allows("https://x.org/other.jpg", UA), "half a rule must not become 'Allow: /'"
    assert rules.allows("https://x.org/public/a.jpg", UA)


@pytest.mark.parametrize(
    ("status", "allowed", "failure"),
    [
        (200, False, None),  # the body below disallows everything
        (404, True, None),  # "unavailable": no rules, whatever the error page says
        (401, True, None),
        (403, True, None),
        (410, True, None),
        (429, False, "http_429"),  # "slow down" is no answer: unreachable, retryable
        (500, False, "http_5xx"),  # "unreachable": complete disallow
        (503, False, "http_5xx"),
        (None, False, "http_5xx"),
    ],
)
def test_robots_status_semantics(status: int | None, allowed: bool, failure: str | None):
    rules = parse_robots(status, b"User-agent: *\nDisallow: /\n")
    assert rules.allows("https://x.org/a.jpg", UA) is allowed
    assert rules.failure == failure


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


# --- W3C TDMRep: the CG final report of 10 May 2024 ---------------------------------------------

# The report's own tdmrep.json examples (section "TDM File on the Origin Server", Examples).
TDMREP_EVERYTHING = b"""[
  {
  "location": "/",
  "tdm-reservation": 1
  }
]"""
TDMREP_THREE_GROUPS = b"""[
  {
  "location": "/directory-a/",
  "tdm-reservation": 1
  },
  {
  "location": "/directory-b/html/",
  "tdm-reservation": 1,
  "tdm-policy":"https://provider.com/policies/policy.json"
  },
  {
  "location": "/directory-b/images/*.jpg",
  "tdm-reservation": 0
  }
]"""


@pytest.mark.parametrize(
    ("body", "path", "location", "policy"),
    [
        (TDMREP_EVERYTHING, "/", "/", None),
        (TDMREP_EVERYTHING, "/any/file.jpg?size=2", "/", None),
        (TDMREP_THREE_GROUPS, "/directory-a/report.pdf", "/directory-a/", None),
        (TDMREP_THREE_GROUPS, "/directory-b/html/page.html", "/directory-b/html/", "https://provider.com/policies/policy.json"),
        (TDMREP_THREE_GROUPS, "/directory-b/images/photo.jpg", None, None),  # reservation 0
        (TDMREP_THREE_GROUPS, "/directory-b/images/photo.png", None, None),  # no rule matches: unset
        (TDMREP_THREE_GROUPS, "/directory-a", None, None),  # "/directory-a/" is a prefix of the path, not the reverse
        (TDMREP_THREE_GROUPS, "/Directory-A/report.pdf", None, None),  # case-sensitive
    ],
)
def test_tdmrep_json_spec_examples(body: bytes, path: str, location: str | None, policy: str | None):
    rule = parse_tdmrep(200, body).reservation("https://provider.com" + path)
    assert (rule.location if rule else None) == location
    assert (rule.policy if rule else None) == policy


@pytest.mark.parametrize(
    ("location", "path", "matches"),
    [
        ("/private/*", "/private/a.jpg", True),
        ("/private/*", "/private/", True),
        ("/private/*", "/public/private/a.jpg", False),  # anchored at the start of the path
        ("/this/path/exactly$", "/this/path/exactly", True),  # the report's "$" example
        ("/this/path/exactly$", "/this/path/exactly/not", False),
        ("/this/*/then", "/this/any/thing/then/more", True),  # the report's "*" example
        ("/this/*/then", "/this/then", False),
        ("*.jpg$", "/a/b.jpg", True),
        ("*.jpg$", "/a/b.jpg?x=1", False),  # the query is part of what is matched (Google's rules)
        ("/*.jpg", "/a/b.jpg?x=1", True),
        ("/a*b*c$", "/a-c-b-c", True),  # "*" backtracks to the last possible "c"
        ("/a*b*c$", "/a-c-b-", False),
        ("/path/foo-%24", "/path/foo-$", True),  # the report: a literal "$" is written %24
        ("/path/foo-$", "/path/foo-", True),  # a final "$" is the anchor
        ("/path/$x", "/path/$x", True),  # a "$" elsewhere is literal
        ("/%7Euser/", "/~user/a.jpg", True),  # escapes of unreserved characters are decoded first
        ("/~user/", "/%7euser/a.jpg", True),
        ("/a%2Fb", "/a/b", False),  # a reserved character's escape is not (%2F is no "/")
        ("/a%2fb/", "/a%2Fb/c", True),  # escapes compare case-insensitively in their hex digits
        ("/café/", "/caf%C3%A9/a.jpg", True),  # non-ASCII: compared as its UTF-8 escapes
        ("/", "/anything", True),
        ("*", "/anything", True),
    ],
)
def test_tdmrep_location_matching(location: str, path: str, matches: bool):
    assert TdmPattern.parse(location).matches(tdm_url_path("https://x.org" + path)) is matches


def test_tdmrep_first_matching_rule_wins():
    body = b'[{"location": "/photos/public/", "tdm-reservation": 0}, {"location": "/photos/", "tdm-reservation": 1}]'
    rules = parse_tdmrep(200, body)
    assert rules.reservation("https://x.org/photos/public/a.jpg") is None, "the first match in sequence is used"
    assert rules.reservation("https://x.org/photos/private/a.jpg").location == "/photos/"
    reversed_order = parse_tdmrep(200, b'[{"location": "/photos/", "tdm-reservation": 1}, {"location": "/photos/public/", "tdm-reservation": 0}]')
    assert reversed_order.reservation("https://x.org/photos/public/a.jpg").location == "/photos/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), (0, 0), ("1", 1), (" 0 ", 0), (1.0, 1), (2, None), ("yes", None), (True, None), (None, None), ([1], None)],
)
def test_tdm_reservation_values(value, expected):
    assert tdm_reservation_value(value) == expected


def test_tdmrep_invalid_reservation_is_unset_and_still_the_first_match():
    body = b'[{"location": "/a/", "tdm-reservation": 2}, {"location": "/", "tdm-reservation": 1}]'
    rules = parse_tdmrep(200, body)
    assert rules.reservation("https://x.org/a/b.jpg") is None, "a protocol error means unset (report: tdm-reservation)"
    assert rules.reservation("https://x.org/b.jpg").location == "/"
    assert "invalid tdm-reservation" in rules.warning


@pytest.mark.parametrize("status", [404, 403, 410, 429, 500, 503, None])
def test_tdmrep_json_not_served_means_no_reservation(status: int | None):
    rules = parse_tdmrep(status, TDMREP_EVERYTHING)
    assert rules.reservation("https://x.org/a.jpg") is None and rules.warning is None


@pytest.mark.parametrize(
    "body",
    [b"<html>not found</html>", b'{"location": "/", "tdm-reservation": 1}', b"[1, 2", b"\xff\xfe[", b""],
)
def test_malformed_tdmrep_json_means_no_reservation_and_a_warning(body: bytes):
    rules = parse_tdmrep(200, body)
    assert rules.reservation("https://x.org/a.jpg") is None
    assert rules.warning


def test_tdmrep_json_entries_without_a_location_are_skipped():
    body = b'["x", {"tdm-reservation": 1}, {"location": 5, "tdm-reservation": 1}, {"location": "/p/", "tdm-reservation": 1}]'
    rules = parse_tdmrep(200, body)
    assert [rule.location for rule in rules.rules] == ["/p/"]
    assert rules.reservation("https://x.org/p/a.jpg").location == "/p/"
    assert "3 rule(s) without a location" in rules.warning


def test_tdmrep_json_size_limit_and_bom():
    assert parse_tdmrep(200, b"\xef\xbb\xbf" + TDMREP_EVERYTHING).reservation("https://x.org/a") is not None
    big = b"[" + b" " * TDMREP_MAX_BYTES + b'{"location": "/", "tdm-reservation": 1}]'
    oversize = parse_tdmrep(200, big)
    assert oversize.reservation("https://x.org/a") is None and "larger" in oversize.warning


def test_tdmrep_pattern_matching_is_linear_on_hostile_patterns():
    pattern = TdmPattern.parse("/" + "*a" * 200 + "*b$")
    assert pattern.matches(tdm_url_path("https://x.org/" + "a" * 5000)) is False  # would take for ever with backtracking


@pytest.mark.parametrize(
    ("fields", "policy", "expected"),
    [
        (["1"], None, "1"),
        ([" 1 "], "https://provider.com/policies/policy.json", "1 (policy https://provider.com/policies/policy.json)"),
        (["0"], None, None),
        (["0", "1"], None, "1"),  # disagreeing fields reserve
        (["2"], None, None),  # a protocol error: unset
        (["yes"], None, None),
        ([], None, None),
    ],
)
def test_tdm_reservation_header(fields: list[str], policy: str | None, expected: str | None):
    assert tdm_header_opt_out(fields, policy) == expected


def test_tdmrep_cache_uses_its_own_path():
    fetched: list[str] = []

    async def fetch(url: str):
        fetched.append(url)
        return parse_tdmrep(404, None)

    async def twice() -> None:
        cache = RobotsCache(fetch, path="/.well-known/tdmrep.json")
        await asyncio.gather(*(cache.rules("http://a.test") for _ in range(5)))

    asyncio.run(twice())
    assert fetched == ["http://a.test/.well-known/tdmrep.json"]
