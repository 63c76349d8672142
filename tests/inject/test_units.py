"""Routes, stand-ins and the stream scrubber, without a network."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote

import pytest

from credproxy.inject.routes import PRESETS, Route, parse_routes
from credproxy.inject.scrub import ScrubRules, StreamScrubber
from credproxy.inject.standin import SecretFormatError, check_secret, make_stand_in
from credproxy.settings import ConfigError, parse_settings


def routes_from(tables: dict[str, dict[str, object]]) -> dict[str, Route]:
    """Routes the way ``run --inject`` gets them: through the typed settings."""
    return parse_routes(parse_settings({"routes": tables}).routes)


SECRET = "sk-ant-api03-" + "Ab9/Cd+Ef_Gh-Ij0Kl1Mn2Op3Qr4St5Uv6Wx7Yz8aB9cD0eF1gH2iJ3kL4mN5"


def test_every_preset_parses_and_a_config_table_overrides_its_preset_field_by_field() -> None:
    routes = routes_from({"anthropic": {"key": "work-anthropic"}})
    assert set(PRESETS) <= set(routes)
    assert routes["anthropic"].credential == "work-anthropic"
    assert routes["anthropic"].header == "x-api-key"
    assert routes["gemini"].header == "x-goog-api-key"
    assert routes["openai"].base_path == "/v1"
    swapped = routes_from({"anthropic": {"token": "claude"}})["anthropic"]
    assert (swapped.credential_kind, swapped.credential, swapped.bucket) == (
        "token",
        "claude",
        "default",
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"upstream": "https://x.test", "key": "k", "header": "h", "colour": 1}, "'colour'"),
        ({"key": "k", "header": "h"}, "upstream: missing"),
        ({"upstream": "http://x.test", "key": "k", "header": "h"}, "only on loopback"),
        ({"upstream": "http://127.0.0.1:9", "key": "k", "header": "h"}, "allow_private"),
        ({"upstream": "https://x.test", "header": "h"}, "exactly one of key"),
        ({"upstream": "https://x.test", "key": "k"}, "exactly one slot"),
        ({"upstream": "https://x.test", "key": "k", "header": "host"}, "cannot carry"),
        ({"upstream": "https://x.test", "key": "k", "header": "h", "format": "x"}, "format"),
        (
            {"upstream": "https://x.test", "key": "k", "header": "h", "methods": ["TRACE"]},
            "methods",
        ),
        ({"upstream": "https://x.test", "key": "k", "header": "h", "paths": ["v1"]}, "paths"),
        ({"upstream": "https://x.test?a=1", "key": "k", "header": "h"}, "no user, query"),
    ],
)
def test_a_bad_route_table_is_an_error_naming_the_route_and_field(
    table: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        routes_from({"mine": table})
    assert "[routes.mine]" in str(caught.value)


def test_path_globs_keep_single_stars_inside_one_segment() -> None:
    route = routes_from(
        {
            "r": {
                "upstream": "https://x.test",
                "key": "k",
                "header": "h",
                "paths": ["/v1/*/items", "/v2/**"],
            }
        }
    )["r"]
    assert route.allows_path("/v1/abc/items")
    assert not route.allows_path("/v1/a/b/items")
    assert route.allows_path("/v2/a/b/c")
    assert not route.allows_path("/v3")


@pytest.mark.parametrize(
    ("secret", "prefix"),
    [
        (SECRET, "sk-ant-api03-"),
        ("ghp_" + "Zy8x" * 11, "ghp_"),
        ("0123456789abcdef" * 4, ""),
    ],
)
def test_a_stand_in_keeps_the_prefix_and_length_and_differs_every_time(
    secret: str, prefix: str
) -> None:
    first, second = make_stand_in(secret), make_stand_in(secret)
    assert first.startswith(prefix)
    assert len(first) == len(secret)
    assert first != second
    assert not first.endswith("\n")


def test_a_short_secret_gets_a_longer_stand_in_with_256_random_bits() -> None:
    stand_in = make_stand_in("AIzaShort12345", prefix="AIza")
    assert stand_in.startswith("AIza")
    assert len(stand_in) - 4 >= 43


@pytest.mark.parametrize("bad", ["abc\n", "a\rb", "", "with\x00nul"])
def test_a_secret_with_a_line_break_or_nul_is_refused(bad: str) -> None:
    with pytest.raises(SecretFormatError):
        check_secret(bad, "key k")


def _all_forms(value: str) -> list[bytes]:
    return [
        value.encode(),
        quote(value, safe="").encode(),
        json.dumps(value)[1:-1].replace("/", "\\/").encode(),
        base64.b64encode(value.encode()),
        base64.urlsafe_b64encode(value.encode()),
    ]


def test_the_scrubber_replaces_each_form_whatever_chunk_boundary_it_straddles() -> None:
    stand_in = make_stand_in(SECRET)
    rules = ScrubRules(SECRET, stand_in)
    document = b"<" + b"|".join(_all_forms(SECRET)) + b">"
    expected = b"<" + b"|".join(_all_forms(stand_in)) + b">"
    for cut in range(1, len(document)):
        scrubber = StreamScrubber(rules)
        out = scrubber.feed(document[:cut]) + scrubber.feed(document[cut:]) + scrubber.flush()
        assert out == expected, cut


def test_base64_of_a_secret_inside_longer_data_loses_the_secret_at_every_alignment() -> None:
    rules = ScrubRules(SECRET, make_stand_in(SECRET))
    for lead in range(3):
        encoded = base64.b64encode(b"z" * lead + SECRET.encode() + b"tail")
        decoded = base64.b64decode(rules.replace_all(encoded))
        assert SECRET.encode() not in decoded
        assert SECRET[:-2].encode() not in decoded


def test_the_scrubber_holds_back_nothing_after_an_event_ending_in_a_newline() -> None:
    rules = ScrubRules(SECRET, make_stand_in(SECRET))
    scrubber = StreamScrubber(rules)
    event = b'event: delta\ndata: {"text": "hi"}\n\n'
    assert scrubber.feed(event) == event


def test_the_in_sandbox_relay_loads_neither_aiohttp_nor_cryptography() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys, credproxy.inject.relay; "
            "print(sorted(m for m in ('aiohttp', 'cryptography', 'msgspec') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "18080=/run/x.sock"],
        ["--listen", "0=/run/x.sock", "--", "true"],
        ["--listen", "18080=relative.sock", "--", "true"],
        ["--port", "18080=/run/x.sock", "--", "true"],
        ["--listen", "18080=/run/x.sock", "--"],
    ],
)
def test_the_relay_refuses_a_malformed_command_line(argv: list[str]) -> None:
    from credproxy.inject.relay import parse_args

    with pytest.raises(ValueError):
        parse_args(argv)
