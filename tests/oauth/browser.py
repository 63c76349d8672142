"""A headless user agent for the test OAuth server: the person at the browser.

It follows redirects and fills oidc-provider's development login, consent and
device forms (plain HTML, no JavaScript), so the tests complete real logins
without a browser. It can also deny: abort the login page, or abort the
device confirmation. Test-only; it trusts the server's HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

MAX_STEPS = 30


@dataclass
class Form:
    form_id: str | None
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _Page(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.links: list[str] = []
        self.pre: dict[str, str] = {}
        self._form: Form | None = None
        self._pre_id: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._form = Form(a.get("id"), a.get("action") or "")
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            self._form.fields[str(a["name"])] = a.get("value") or ""
        elif tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        elif tag == "pre":
            self._pre_id = a.get("id")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "pre":
            self._pre_id = None

    def handle_data(self, data: str) -> None:
        if self._pre_id is not None:
            self.pre[self._pre_id] = self.pre.get(self._pre_id, "") + data


@dataclass
class Outcome:
    """Where the walk ended: a redirect to ``stop_prefix`` or a final page."""

    url: str
    status: int
    text: str

    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    def pre(self, pre_id: str) -> str | None:
        return _Page(self.text).pre.get(pre_id)


class HeadlessUser:
    """One person with one browser (own cookie jar)."""

    def __init__(self, login: str = "alice", *, deny: bool = False) -> None:
        self.login = login
        self.deny = deny
        self.client = httpx.Client(timeout=10.0)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HeadlessUser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def browse(
        self, url: str, *, user_code: str | None = None, stop_prefix: str | None = None
    ) -> Outcome:
        """Act like the user: follow redirects and submit each known form until the
        next location starts with ``stop_prefix`` or a page without a known form."""
        method, data = "GET", None
        for _ in range(MAX_STEPS):
            response = self.client.request(method, url, data=data)
            method, data = "GET", None
            if response.is_redirect:
                location = urljoin(url, response.headers["location"])
                if stop_prefix is not None and location.startswith(stop_prefix):
                    return Outcome(location, response.status_code, "")
                url = location
                continue
            page = _Page(response.text)
            if response.status_code != 200 or not page.forms:
                return Outcome(url, response.status_code, response.text)
            form = page.forms[0]
            fields = dict(form.fields)
            if fields.get("prompt") == "login":
                if self.deny:
                    abort = next((link for link in page.links if "/abort" in link), None)
                    assert abort is not None, "the login page has no abort link"
                    url = urljoin(url, abort)
                    continue
                fields.update(login=self.login, password="any")
            elif fields.get("prompt") == "consent":
                pass
            elif form.form_id == "op.deviceInputForm":
                assert user_code is not None, "the device page asks for a user code"
                fields["user_code"] = user_code
            elif form.form_id == "op.deviceConfirmForm":
                if self.deny:
                    fields["abort"] = "yes"
                    fields.pop("confirm", None)
                    done = self.client.post(urljoin(url, form.action), data=fields)
                    return Outcome(url, done.status_code, done.text)
            else:
                return Outcome(url, response.status_code, response.text)
            url, method, data = urljoin(url, form.action), "POST", fields
        raise AssertionError("the login took too many steps")

    def copy_code(self, auth_url: str, oob_prefix: str) -> str:
        """Log in through ``auth_url`` and return what the provider's page shows to copy."""
        landing = self.browse(auth_url, stop_prefix=oob_prefix)
        page = self.client.get(landing.url)
        code = _Page(page.text).pre.get("code")
        assert code, f"the code page shows no code (status {page.status_code})"
        return code

    def deliver_to_loopback(self, auth_url: str) -> httpx.Response:
        """Log in and let the browser follow the redirect to the host's loopback listener."""
        redirect_uri = parse_qs(urlsplit(auth_url).query)["redirect_uri"][0]
        landing = self.browse(auth_url, stop_prefix=redirect_uri)
        return self.client.get(landing.url)

    def enter_device_code(self, verification_url: str, user_code: str) -> Outcome:
        return self.browse(verification_url, user_code=user_code)
