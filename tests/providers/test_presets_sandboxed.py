"""Each preset, end to end: ``credproxy login NAME`` inside ``credproxy run --sandbox
bwrap``, the daemon talking to a local server that behaves like that provider on the
wire (tests/providers/fakes.py). The config overrides only the preset's endpoints and
client id (and a poll interval where the provider names none), so everything else
under test is the preset itself.

Every byte the daemon sends into the sandbox passes a recording relay inside it: no
refresh token may be among them.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from credproxy.tokens import NO_EXPIRY
from tests.oauth.harness import LoginProcess
from tests.providers import fakes
from tests.providers.conftest import PresetHost, overrides

URL_LINE = r"^\s+(http\S+)$"
DEVICE_LINE = r"^Open (\S+) and enter the code: (\S+)$"
DENIED = "The login was denied at the provider."
Kind = Literal["device", "loopback", "paste"]


@dataclass(frozen=True)
class Case:
    preset: str
    server: str
    kind: Kind
    extra: dict[str, Any] = field(default_factory=dict)
    refreshes: bool = True

    def __str__(self) -> str:
        return self.server if self.preset == self.server else f"{self.preset}-{self.server}"


CASES = [
    Case("github", "github", "device", refreshes=False),
    Case("github", "github-app", "device"),
    Case("google", "google", "loopback"),
    Case("microsoft", "microsoft", "device"),
    Case("gitlab", "gitlab", "device"),
    Case("anthropic", "anthropic", "paste"),
    Case("codex", "codex", "loopback"),
    Case("codex", "codex-device", "device", {"flow": "device_code", "poll_interval_s": 0.2}),
]
IDS = [str(case) for case in CASES]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _open(url: str) -> tuple[int, str, str]:
    """GET ``url`` as the browser would, without following redirects: status, Location
    and body."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=20) as response:
            return response.status, "", response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", ""), exc.read().decode()


def server_of(servers: dict[str, fakes.FakeProvider], case: Case) -> fakes.FakeProvider:
    return servers["codex" if case.server == "codex-device" else case.server]


def start(host: PresetHost, case: Case, server: fakes.FakeProvider) -> tuple[LoginProcess, Path]:
    host.configure({case.preset: {**overrides(case.preset, server), **case.extra}})
    script = f"credproxy login {case.preset} --json && credproxy token get {case.preset} --json"
    return host.sandboxed(case.preset, script)


Outcome = Literal["approve", "deny", "forge"]


def act_as_user(
    login: LoginProcess, case: Case, server: fakes.FakeProvider, outcome: Outcome
) -> None:
    """What a person does with what the sandboxed login shows."""
    if case.kind == "device":
        shown = login.read_line_matching(DEVICE_LINE)
        if outcome == "approve":
            server.approve(shown[2])
        elif outcome == "deny":
            server.deny(shown[2])
        else:  # the provider no longer knows the device code it issued
            server.devices.clear()
        return
    url = login.read_line_matching(URL_LINE)[1]
    server.decision = "deny" if outcome == "deny" else "approve"
    status, location, page = _open(url)
    if case.kind == "paste":
        if outcome == "deny":
            assert status == 302
            login.paste(location)
            return
        found = re.search(r"(\S+)#(\S+)$", page.strip())
        assert found, page
        code = found[1] if outcome == "approve" else "forged-code-000"
        login.paste(f"{code}#{found[2]}")
        return
    assert status == 302, (status, page)
    if outcome == "forge":
        query = parse_qs(urlsplit(location).query)
        location = (
            location.split("?")[0]
            + "?"
            + urlencode({"code": "forged-code-000", "state": query["state"][0]})
        )
    _open(location)  # the browser brings the redirect to the daemon's loopback listener


def assert_no_refresh_token_crossed(record: Path, server: fakes.FakeProvider, text: str) -> None:
    received = record.read_bytes()
    assert received, "the relay recorded nothing"
    assert b'"refresh_token":' not in received  # the key; refresh_token_expires_in is not secret
    for secret in server.refresh_tokens:
        assert secret.encode() not in received
        assert secret not in text
    for secret in server.secrets_issued:
        if secret.startswith(("dc-", "deviceauth-", "server-verifier-", "code-")):
            assert secret.encode() not in received


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_sandboxed_login_succeeds_and_the_host_refreshes_without_leaking_the_refresh_token(
    preset_host: PresetHost, fake_providers: dict[str, fakes.FakeProvider], case: Case
) -> None:
    server = server_of(fake_providers, case)
    before = len(server.token_requests("refresh_token"))
    login, record = start(preset_host, case, server)
    act_as_user(login, case, server, "approve")
    status, stdout, stderr = login.finish(timeout=60)
    assert status == 0, stderr
    result, token = (json.loads(line) for line in stdout.splitlines())
    assert result["ok"] is True and result["provider"] == case.preset
    assert "refresh_token" not in token
    stored = preset_host.stored(case.preset)
    assert stored is not None
    assert stored["access_token"] == token["access_token"]
    refreshes = server.token_requests("refresh_token")[before:]
    if case.refreshes:
        assert len(refreshes) == 1  # the access token was nearly expired: one refresh
        assert stored["refresh_token"] in server.refresh_tokens
        if server.rotates:
            used = refreshes[0].body["refresh_token"]
            assert server.refresh_tokens[used] is False  # rotated out...
            assert stored["refresh_token"] != used  # ...and the new one kept on the host
    else:
        # A GitHub OAuth App token does not expire: stored with the sentinel, never refreshed.
        assert refreshes == []
        assert stored["expiry"] == NO_EXPIRY == token["expiry"]
        assert "refresh_token" not in stored
    assert_no_refresh_token_crossed(record, server, stdout + stderr)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_denied_login_says_so_and_stores_nothing(
    preset_host: PresetHost, fake_providers: dict[str, fakes.FakeProvider], case: Case
) -> None:
    server = server_of(fake_providers, case)
    login, _ = start(preset_host, case, server)
    act_as_user(login, case, server, "deny")
    status, stdout, stderr = login.finish(timeout=60)
    assert status == 1, stderr
    # A background login reports the denial as such; a pasted refusal fails the exchange.
    assert DENIED in stderr or "the login was denied (access_denied)" in stderr
    assert json.loads(stdout.splitlines()[0])["ok"] is False
    assert preset_host.stored(case.preset) is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_an_expired_code_or_device_code_ends_the_login_with_a_message(
    preset_host: PresetHost, fake_providers: dict[str, fakes.FakeProvider], case: Case
) -> None:
    server = server_of(fake_providers, case)
    server.device_lifetime_s = 1.0
    server.code_lifetime_s = 0.0
    login, _ = start(preset_host, case, server)
    if case.kind == "device":
        login.read_line_matching(DEVICE_LINE)  # and nobody enters it
    else:
        act_as_user(login, case, server, "approve")
    status, _, stderr = login.finish(timeout=60)
    assert status == 1, stderr
    expected = "device code expired" if case.kind == "device" else "invalid_grant"
    assert expected in stderr
    assert preset_host.stored(case.preset) is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_code_the_provider_does_not_know_fails_the_login_without_echoing_it(
    preset_host: PresetHost, fake_providers: dict[str, fakes.FakeProvider], case: Case
) -> None:
    server = server_of(fake_providers, case)
    login, _ = start(preset_host, case, server)
    act_as_user(login, case, server, "forge")
    status, _, stderr = login.finish(timeout=60)
    assert status == 1, stderr
    assert "invalid_grant" in stderr or "refused the request" in stderr
    assert "forged-code-000" not in stderr
    assert preset_host.stored(case.preset) is None
