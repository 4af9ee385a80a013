"""fwdweb in process (Starlette's TestClient over a real SQLite store, an
injected clock): cookies, headers, expiry and input checks that need no
mail. The flows with mail are in tests/e2e/test_web.py."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from fwdmilter import config
from fwdmilter.confirm import digest, new_secret
from fwdmilter.store.base import Forward, WebToken
from fwdmilter.store.sqlite import SQLiteStore
from fwdweb.app import CSRF_COOKIE, SESSION_COOKIE, create_app

with warnings.catch_warnings():
    # Starlette 1.x would rather its TestClient ran on "httpx2"; httpx works
    # the same for these requests.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "state.db", clock=clock)
    yield s
    s.close()


def client(store: SQLiteStore, clock: Clock, base_url: str) -> TestClient:
    cfg = config.loads(
        f'[srs]\ndomain = "fwd.example"\n[forwarding]\ndomains = ["fwd.example"]\n'
        f'[web]\nbase_url = "{base_url}"\nsession_minutes = 10\n'
        '[mta]\nsubmit = "127.0.0.1:9"\n'
    )
    return TestClient(create_app(cfg, store, clock), base_url=base_url)


def session(store: SQLiteStore, rcpt: str, expires: float) -> str:
    secret = new_secret()
    store.put_token(WebToken("session", digest(secret), rcpt, created=NOW, expires=expires))
    return secret


def test_cookies_are_secure_under_https_and_strict_always(store: SQLiteStore, clock: Clock) -> None:
    with client(store, clock, "https://fwd.example") as c:
        cookie = c.get("/").headers["set-cookie"]
    assert CSRF_COOKIE in cookie and "Secure" in cookie
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    with client(store, clock, "http://127.0.0.1") as c:
        assert "Secure" not in c.get("/").headers["set-cookie"]


def test_pages_forbid_scripts_framing_and_caching(store: SQLiteStore, clock: Clock) -> None:
    with client(store, clock, "http://127.0.0.1") as c:
        r = c.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


def test_a_session_expires(store: SQLiteStore, clock: Clock) -> None:
    store.put_forward(Forward("a@fwd.example", ("a@inner.example",)))
    secret = session(store, "a@fwd.example", NOW + 600)
    with client(store, clock, "http://127.0.0.1") as c:
        c.cookies.set(SESSION_COOKIE, secret)
        assert c.get("/me", follow_redirects=False).status_code == 200
        clock.now += 600
        assert c.get("/me", follow_redirects=False).status_code == 303


def test_a_session_of_a_moved_address_is_no_session(store: SQLiteStore, clock: Clock) -> None:
    store.put_forward(Forward("a@fwd.example", (), moved_to="a@new.example"))
    secret = session(store, "a@fwd.example", NOW + 600)
    with client(store, clock, "http://127.0.0.1") as c:
        c.cookies.set(SESSION_COOKIE, secret)
        assert c.get("/me", follow_redirects=False).status_code == 303


def test_api_input_is_checked(store: SQLiteStore, clock: Clock) -> None:
    with client(store, clock, "http://127.0.0.1") as c:
        assert c.post("/api/v1/sign-in", content=b"not json").status_code == 400
        assert c.post("/api/v1/sign-in", json=["a@fwd.example"]).status_code == 400
        r = c.get("/api/v1/forwards/a@fwd.example")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.get("/api/v1/forwards/a@fwd.example", headers={"Authorization": "Basic eA=="})
        assert r.status_code == 401


def test_unknown_link_and_post_only_confirmation(store: SQLiteStore, clock: Clock) -> None:
    store.put_forward(
        Forward("a@fwd.example", (), pending="a@inner.example", pending_expires=NOW + 60)
    )
    secret = new_secret()
    store.put_token(
        WebToken(
            "confirm",
            digest(secret),
            "a@fwd.example",
            name="a@inner.example",
            data="admin",
            created=NOW,
            expires=NOW + 60,
        )
    )
    with client(store, clock, "http://127.0.0.1") as c:
        assert c.get(f"/confirm/{new_secret()}").status_code == 404
        for _ in range(3):
            assert c.get(f"/confirm/{secret}").status_code == 200
        assert c.put(f"/confirm/{secret}").status_code == 405
        fwd = store.get_forward("a@fwd.example")
        assert fwd is not None and fwd.target == "" and fwd.pending == "a@inner.example"
        csrf = c.cookies[CSRF_COOKIE]
        assert (
            c.post(f"/confirm/{secret}", data={"csrf": csrf, "answer": "maybe"}).status_code == 400
        )
        r = c.post(f"/confirm/{secret}", data={"csrf": csrf, "answer": "confirm"})
        assert r.status_code == 200
    fwd = store.get_forward("a@fwd.example")
    assert fwd is not None and fwd.target == "a@inner.example" and fwd.pending == ""
