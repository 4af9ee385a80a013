"""fwdweb and the recipient's own policy, in process (Starlette's TestClient,
a real SQLite store, a configuration file that sets some keys): the record
shows the effective policy of ``fwdctl forward show --json`` (the page in
plain words), and the page's forms and the API's PATCH change the SPF
actions, the sender rewrite and the trusted forwarders with fwdctl's rules
(fwdmilter.table). Also the confirmation refused by forwarding.max_targets."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from fwdmilter import config, table
from fwdmilter.confirm import digest, new_secret
from fwdmilter.store.base import Forward, WebToken
from fwdmilter.store.sqlite import SQLiteStore
from fwdweb import records
from fwdweb.app import CSRF_COOKIE, SESSION_COOKIE, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW = 1_800_000_000.0
BOB = "bob@fwd.example"
API = f"/api/v1/forwards/{BOB}"


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    path = tmp_path / "fwdmilter.toml"
    path.write_text(
        '[srs]\ndomain = "fwd.example"\n'
        '[forwarding]\ndomains = ["fwd.example"]\nmax_targets = 2\n'
        '[spf]\nfail = "reject"\n'
        '[web]\nbase_url = "http://127.0.0.1"\n'
        '[mta]\nsubmit = "127.0.0.1:9"\n'
    )
    return config.load(path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "state.db", clock=lambda: NOW)
    s.put_forward(Forward(BOB, ("bob@inner.example",), created=NOW, updated=NOW))
    yield s
    s.close()


@pytest.fixture
def client(cfg: config.Config, store: SQLiteStore) -> Iterator[tuple[TestClient, dict[str, str]]]:
    api, signed_in = new_secret(), new_secret()
    store.put_token(WebToken("api", digest(api), BOB, name="script", created=NOW))
    store.put_token(WebToken("session", digest(signed_in), BOB, created=NOW, expires=NOW + 600))
    with TestClient(create_app(cfg, store, lambda: NOW), base_url="http://127.0.0.1") as c:
        c.cookies.set(SESSION_COOKIE, signed_in)
        c.get("/me")  # the CSRF cookie
        yield c, {"Authorization": f"Bearer {api}"}


def _stored(store: SQLiteStore) -> Forward:
    fwd = store.get_forward(BOB)
    assert fwd is not None
    return fwd


def test_the_record_has_the_policy_of_fwdctl_show(
    cfg: config.Config, store: SQLiteStore, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, auth = client
    policy = c.get(API, headers=auth).json()["policy"]
    assert policy == table.effective_policy(cfg, _stored(store), table.configured_keys(cfg))
    assert policy["spf"]["fail"] == {"value": "reject", "source": "global"}  # the file sets it
    assert policy["spf"]["softfail"] == {"value": "accept", "source": "default"}
    assert policy["trusted"] == {"value": [], "source": "default"}


def test_the_api_sets_and_drops_spf_actions_and_rewrite(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, auth = client
    r = c.patch(API, headers=auth, json={"spf_actions": {"softfail": "reject"}, "rewrite": "none"})
    assert r.status_code == 200
    assert r.json()["policy"]["spf"]["softfail"] == {"value": "reject", "source": "recipient"}
    assert r.json()["policy"]["rewrite"] == {"value": "none", "source": "recipient"}
    fwd = _stored(store)
    assert fwd.spf_action("softfail") == "reject" and fwd.rewrite == "none"
    assert r.json()["targets"] == ["bob@inner.example"]  # the rest stays
    r = c.patch(
        API, headers=auth, json={"spf_actions": {"softfail": "inherit"}, "rewrite": "inherit"}
    )
    assert r.json()["policy"]["spf"]["softfail"]["source"] == "default"
    assert _stored(store).spf_actions == () and _stored(store).rewrite == ""


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"spf_actions": {"pass": "reject"}}, "SPF result 'pass'"),
        (
            {"spf_actions": {"fail": "bounce"}},
            "action 'bounce' is not one of accept, reject, tempfail",
        ),
        ({"spf_actions": "reject"}, "spf_actions must be an object"),
        ({"rewrite": "sometimes"}, "rewrite 'sometimes' is not one of"),
        ({"add_trusted": "not a domain"}, "neither a network (CIDR) nor a domain"),
        ({"add_trusted": "localhost"}, "a domain needs a dot"),
        ({"add_trusted": ["192.0.2.1"]}, "add_trusted must be one forwarder"),
        ({"remove_trusted": "192.0.2.1"}, "192.0.2.1/32 is not one of your trusted forwarders"),
        ({"trust": "192.0.2.1"}, "unknown fields: trust"),
    ],
)
def test_bad_policy_values_are_refused_with_fwdctls_reasons(
    store: SQLiteStore,
    client: tuple[TestClient, dict[str, str]],
    body: dict[str, object],
    text: str,
) -> None:
    c, auth = client
    before = _stored(store)
    r = c.patch(API, headers=auth, json={**body, "contact": "x@other.example"})
    assert r.status_code == 400 and text in r.json()["error"]
    assert _stored(store) == before  # nothing of a refused change is kept


def test_the_api_adds_and_removes_trusted_forwarders_in_stored_form(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, auth = client
    c.patch(API, headers=auth, json={"add_trusted": "192.0.2.7/24"})
    r = c.patch(API, headers=auth, json={"add_trusted": "Alumni.Example.ORG."})
    assert r.json()["policy"]["trusted"] == {
        "value": ["192.0.2.0/24", "alumni.example.org"],
        "source": "recipient",
    }
    assert c.patch(API, headers=auth, json={"add_trusted": "192.0.2.9/24"}).status_code == 200
    assert _stored(store).trusted == ("192.0.2.0/24", "alumni.example.org")  # no duplicate
    r = c.patch(API, headers=auth, json={"remove_trusted": "192.0.2.1/24"})
    assert r.status_code == 200 and _stored(store).trusted == ("alumni.example.org",)


def test_the_page_shows_the_policy_in_plain_words_and_its_form_changes_it(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, _ = client
    page = c.get("/me").text
    assert (
        "Mail whose sender&#39;s domain says it did not send it (SPF fail)"
        '<span class="now">now: <span id="spf-fail">refused (site default)</span>'
    ) in page
    assert "always rewritten, whatever you choose" in page
    csrf = c.cookies[CSRF_COOKIE]
    form = {f"spf_{r}": "inherit" for r in ("fail", "neutral", "none", "permerror", "temperror")}
    r = c.post(
        "/me/update",
        data={"csrf": csrf, **form, "spf_softfail": "tempfail", "rewrite": "when-needed"},
    )
    assert r.status_code == 200 and "Saved." in r.text
    assert (
        'id="spf-softfail">refused for now (the sender&#39;s server tries again later)'
        " (your choice)" in r.text
    )
    assert "acts as always" in r.text  # when-needed without srs.outbound_ips
    fwd = _stored(store)
    assert fwd.spf_actions == (("softfail", "tempfail"),) and fwd.rewrite == "when-needed"
    r = c.post("/me/update", data={"csrf": csrf, "spf_fail": "sometimes"})
    assert r.status_code == 400 and "action &#39;sometimes&#39; is not one of" in r.text
    r = c.post("/me/update", data={"csrf": "forged", "spf_fail": "accept"})
    assert r.status_code == 403 and _stored(store).spf_action("fail") == ""


def test_the_page_trusts_and_removes_a_forwarder(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, _ = client
    csrf = c.cookies[CSRF_COOKIE]
    r = c.post("/me/update", data={"csrf": csrf, "add_trusted": " "})
    assert r.status_code == 400 and "give a network" in r.text
    r = c.post("/me/update", data={"csrf": csrf, "add_trusted": "999.1.2.3"})
    assert r.status_code == 400 and "a domain needs a dot and a name after it" in r.text
    r = c.post("/me/update", data={"csrf": csrf, "add_trusted": "alumni.example.org"})
    assert r.status_code == 200 and '<td class="forwarder">alumni.example.org</td>' in r.text
    assert 'name="remove_trusted" value="alumni.example.org"' in r.text
    assert _stored(store).trusted == ("alumni.example.org",)
    r = c.post("/me/update", data={"csrf": csrf, "remove_trusted": "alumni.example.org"})
    assert r.status_code == 200 and '<p id="trusted">None yet.</p>' in r.text
    assert _stored(store).trusted == ()


def test_a_confirmation_past_max_targets_says_so(
    store: SQLiteStore, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, _ = client
    # The recipient asked to add a target; the admin filled the address meanwhile.
    store.put_forward(
        Forward(
            BOB,
            ("bob@inner.example", "bob@work.example"),
            pending="bob@home.example",
            pending_expires=NOW + 60,
        )
    )
    secret = new_secret()
    store.put_token(
        WebToken(
            "confirm",
            digest(secret),
            BOB,
            name="bob@home.example",
            data="recipient add",
            created=NOW,
            expires=NOW + 60,
        )
    )
    r = c.post(f"/confirm/{secret}", data={"csrf": c.cookies[CSRF_COOKIE], "answer": "confirm"})
    assert r.status_code == 409
    assert "Too many targets" in r.text and "the most this forwarder allows (2)" in r.text
    assert "no longer valid" not in r.text and "never existed" not in r.text
    fwd = _stored(store)
    assert fwd.targets == ("bob@inner.example", "bob@work.example") and fwd.pending == ""


def test_openapi_names_every_field_of_the_record_and_of_a_change(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    c, auth = client
    schemas = c.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert set(schemas["Changes"]["properties"]) == set(records.FIELDS)
    record = c.get(API, headers=auth).json()
    assert set(schemas["Forward"]["properties"]) == set(record)
    policy = schemas["Policy"]["properties"]
    assert set(policy) == set(record["policy"])
    assert set(policy["spf"]["properties"]) == set(record["policy"]["spf"])
