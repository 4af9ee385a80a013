"""fwdweb with several targets, in process (Starlette's TestClient, a real
SQLite store, the harness's SMTP listener for the mails): the record lists
every target and the held mail of each; ``update`` replaces, adds (after
confirmation) and removes targets, one new target at a time, within
``forwarding.max_targets``."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from fwdmilter import config
from fwdmilter.confirm import digest, new_secret
from fwdmilter.store.base import Forward, HeldEntry, WebToken
from fwdmilter.store.sqlite import SQLiteStore
from fwdweb.app import CSRF_COOKIE, create_app
from tests.harness.sink import Sink

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW = 1_800_000_000.0
BOB = "bob@fwd.example"
API = f"/api/v1/forwards/{BOB}"


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.add_listener("submit")
    yield s
    s.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "state.db", clock=lambda: NOW)
    s.put_forward(Forward(BOB, ("a@x.example", "b@y.example"), created=NOW, updated=NOW))
    yield s
    s.close()


@pytest.fixture
def client(store: SQLiteStore, sink: Sink) -> Iterator[tuple[TestClient, dict[str, str]]]:
    cfg = config.loads(
        '[srs]\ndomain = "fwd.example"\n'
        '[forwarding]\ndomains = ["fwd.example"]\nmax_targets = 3\n'
        '[web]\nbase_url = "http://127.0.0.1"\n'
        f'[mta]\nsubmit = "127.0.0.1:{sink.port("submit")}"\n'
    )
    secret = new_secret()
    store.put_token(WebToken("api", digest(secret), BOB, name="script", created=NOW))
    with TestClient(create_app(cfg, store, lambda: NOW), base_url="http://127.0.0.1") as c:
        yield c, {"Authorization": f"Bearer {secret}"}


def _link(sink: Sink, to: str) -> str:
    body = sink.wait_for(to, timeout=10).email.get_body()
    assert body is not None
    found = re.search(r"https?://\S+(/confirm/\S+)", body.get_content())
    assert found is not None
    return found.group(1)


def test_the_record_lists_every_target_and_their_held_mail(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, auth = client
    for target, qid in (("a@x.example", "4AAA"), ("b@y.example", "4BBB")):
        store.hold(
            HeldEntry(target, f"mx1/{qid}", "H", "s@sender.example", BOB, qid, "mx1", "550", NOW)
        )
    data = c.get(API, headers=auth).json()
    assert data["target"] == "a@x.example"  # the one-target field stays
    assert data["targets"] == ["a@x.example", "b@y.example"]
    assert sorted((h["target"], h["id"]) for h in data["held"]) == [
        ("a@x.example", "mx1/4AAA"),
        ("b@y.example", "mx1/4BBB"),
    ]


def test_remove_and_replace_act_at_once_but_never_leave_none(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    c, auth = client
    r = c.patch(API, headers=auth, json={"remove_target": "A@X.example"})
    assert r.status_code == 200 and r.json()["targets"] == ["b@y.example"]
    r = c.patch(API, headers=auth, json={"remove_target": "b@y.example"})
    assert r.status_code == 400 and "only target" in r.json()["error"]
    r = c.patch(API, headers=auth, json={"remove_target": "q@q.example"})
    assert r.status_code == 400 and "not one of the targets" in r.json()["error"]
    r = c.patch(API, headers=auth, json={"target": "a@x.example", "add_target": "c@z.example"})
    assert r.status_code == 400 and "one new target at a time" in r.json()["error"]


def test_a_current_target_as_target_keeps_it_alone(
    client: tuple[TestClient, dict[str, str]], sink: Sink
) -> None:
    c, auth = client
    r = c.patch(API, headers=auth, json={"target": "B@Y.example"})
    assert r.status_code == 200
    assert r.json()["targets"] == ["b@y.example"] and r.json()["pending"] is None
    assert sink.messages() == []  # nothing to confirm


def test_add_target_joins_once_confirmed(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]], sink: Sink
) -> None:
    c, auth = client
    r = c.patch(API, headers=auth, json={"add_target": "c@z.example"})
    assert r.status_code == 200
    assert r.json()["targets"] == ["a@x.example", "b@y.example"]
    assert r.json()["pending"]["target"] == "c@z.example"
    full = c.patch(API, headers=auth, json={"add_target": "d@z.example"})
    assert full.status_code == 200  # 2 targets + 1 new: within 3 (it replaces the pending one)
    link = _link(sink, "d@z.example")
    page = c.get(link)
    assert page.status_code == 200 and "too, and will go on doing so" in page.text
    assert "a@x.example, b@y.example" in page.text
    r = c.post(link, data={"csrf": c.cookies[CSRF_COOKIE], "answer": "confirm"})
    assert r.status_code == 200
    assert "a@x.example, b@y.example, d@z.example" in r.text
    f = store.get_forward(BOB)
    assert f is not None and f.targets == ("a@x.example", "b@y.example", "d@z.example")
    over = c.patch(API, headers=auth, json={"add_target": "e@z.example"})
    assert over.status_code == 400 and "at most 3 targets" in over.json()["error"]


def test_a_new_target_replaces_them_all_once_confirmed(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]], sink: Sink
) -> None:
    c, auth = client
    r = c.patch(API, headers=auth, json={"target": "new@z.example"})
    assert r.json()["targets"] == ["a@x.example", "b@y.example"]  # until confirmed
    link = _link(sink, "new@z.example")
    assert "until you confirm" in c.get(link).text
    c.post(link, data={"csrf": c.cookies[CSRF_COOKIE], "answer": "confirm"})
    f = store.get_forward(BOB)
    assert f is not None and f.targets == ("new@z.example",)


def test_sign_in_mails_every_target(client: tuple[TestClient, dict[str, str]], sink: Sink) -> None:
    c, _ = client
    r = c.post("/api/v1/sign-in", json={"address": BOB})
    assert r.status_code == 202
    for target in ("a@x.example", "b@y.example"):
        assert "Sign in to manage" in str(sink.wait_for(target, timeout=10).email["Subject"])
