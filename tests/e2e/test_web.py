"""The recipient's web service end to end: fwdmilter-web under uvicorn on
loopback, beside the real milter on a real Postfix BORDER, its mails going
through BORDER and INNER to the sink.

The module runs once per store backend (SQLite, a private Redis). Every test
makes its own forwarding addresses (unique tokens) and, for the per-client
rate limit, its own client address (X-Forwarded-For from the loopback proxy
the service trusts), so the tests share one service.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from fwdmilter.config import StoreSettings
from fwdmilter.confirm import digest
from fwdmilter.store import open_store
from fwdmilter.store.base import HeldEntry, Store, WebToken
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import PostfixInstance, RuntimeDir
from tests.harness.proc import free_port
from tests.harness.redis import RedisServer
from tests.harness.sink import Message
from tests.harness.smtp import unique
from tests.harness.web_proc import FwdWeb, link_in, web_settings

pytestmark = pytest.mark.e2e

PER_ADDRESS = 3
PER_CLIENT = 6
_clients = itertools.count(1)


@dataclass
class World:
    fm: FwdMilter
    web: FwdWeb
    border: PostfixInstance
    mail: MailWorld
    store: Store
    clients: list[httpx.Client] = dataclasses.field(default_factory=list)

    def http(self, base_url: str, headers: dict[str, str]) -> httpx.Client:
        """An HTTP client closed at the end of the test."""
        c = httpx.Client(base_url=base_url, headers=headers, timeout=20)
        self.clients.append(c)
        return c

    def close_clients(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()

    def client(self, ip: str | None = None) -> httpx.Client:
        """A browser-like client; ``ip`` is the client address the proxy names."""
        headers = {"X-Forwarded-For": ip or f"127.9.{next(_clients) % 250}.{next(_clients) % 250}"}
        return self.http(self.web.base_url, headers)

    def mail_to(self, target: str, subject: str) -> Message:
        return self.mail.wait_for(
            target, match=lambda m: subject in str(m.email["Subject"]), timeout=30
        )

    def body(self, msg: Message) -> str:
        part = msg.email.get_body(("plain",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    def rcpt_reply(self, rcpt: str) -> str:
        t = self.mail.send_from_outside(self.border, f"s{unique()}@pass.example", [rcpt], "hi")
        return str(t.rcpt(rcpt))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def w(
    request: pytest.FixtureRequest,
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp(f"web-{request.param}")
    redis = RedisServer(workdir / "redis") if request.param == "redis" else None
    port = free_port()
    fm = FwdMilter(
        runtime.socket(f"fwd-web-{request.param}"),
        workdir / "milter",
        dns_port=mail.dns.port,
        store_url=redis.url if redis else None,
        settings={"web": web_settings(port)},
    )
    border = border_factory(milter=fm.spec, start=False)
    fm.serve(border)
    border.start()
    web = FwdWeb(
        fm,
        workdir / "web",
        port=port,
        settings={
            "web": {"signin_per_address": PER_ADDRESS, "signin_per_client": PER_CLIENT},
        },
    )
    web.start()
    store = open_store(StoreSettings(url=fm.settings["store"]["url"]))
    try:
        yield World(fm, web, border, mail, store)
    finally:
        store.close()
        web.stop()
        fm.stop()
        if redis is not None:
            redis.stop()


@pytest.fixture(autouse=True)
def _close_clients(w: World) -> Iterator[None]:
    yield
    w.close_clients()


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def new_pair(user: str = "alice") -> tuple[str, str]:
    tok = unique()
    return f"w{tok}@fwd.example", f"{user}+{tok}@inner.example"


def confirm_link(w: World, rcpt: str, target: str) -> str:
    msg = w.mail_to(target, f"Confirm forwarding of {rcpt}")
    assert msg.mail_from == "postmaster@fwd.example"
    assert msg.email["Auto-Submitted"] == "auto-generated"
    return link_in(w.body(msg), w.web.base_url, "/confirm/")


def sign_in(w: World, c: httpx.Client, rcpt: str, target: str) -> None:
    """The whole sign-in: ask, read the mailed link, press the button."""
    r = c.post("/api/v1/sign-in", json={"address": rcpt})
    assert r.status_code == 202, r.text
    link = link_in(
        w.body(w.mail_to(target, f"Sign in to manage {rcpt}")), w.web.base_url, "/sign-in/"
    )
    page = c.get(link)
    assert page.status_code == 200 and "Sign in as" in page.text
    assert c.get("/me").status_code == 303  # the GET signed nobody in
    r = c.post(link, data={"csrf": csrf_of(page)})
    assert r.status_code == 303 and r.headers["location"] == "/me"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert c.get("/me").status_code == 200


def api_token(w: World, c: httpx.Client, name: str = "script") -> str:
    page = c.get("/me")
    r = c.post("/me/tokens", data={"csrf": csrf_of(page), "name": name})
    assert r.status_code == 200, r.text
    found = re.search(r'id="new-token">([^<]+)<', r.text)
    assert found, r.text
    return found.group(1)


# -- confirmed targets -----------------------------------------------------------


def test_fwdctl_confirm_pending_4xx_then_confirm_by_post_only(w: World) -> None:
    rcpt, target = new_pair()
    out = w.fm.fwdctl("forward", "set", rcpt, target, "--confirm").stdout
    assert "(none)" in out and f"pending={target}" in out
    shown = w.fm.fwdctl("forward", "show", rcpt, "--json").stdout
    assert f'"pending": "{target}"' in shown and '"pending_active": true' in shown
    assert w.rcpt_reply(rcpt).startswith("450 4.2.1 This forwarding address waits")
    link = confirm_link(w, rcpt, target)
    c = w.client()
    for _ in range(2):  # a mail scanner's GETs change nothing
        page = c.get(link)
        assert page.status_code == 200
        assert rcpt in page.text and target in page.text and "Confirm" in page.text
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None and fwd.target == "" and fwd.pending == target
    r = c.post(link, data={"csrf": csrf_of(page), "answer": "confirm"})
    assert r.status_code == 200 and "now forwarded to" in r.text
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None and fwd.target == target and fwd.pending == ""
    assert w.rcpt_reply(rcpt).startswith("250")
    w.mail.wait_for(target, match=lambda m: m.email["Subject"] == "hi")
    # The link is used up: neither its page nor its POST work again.
    assert c.get(link).status_code == 404
    again = c.post(link, data={"csrf": csrf_of(page), "answer": "decline"})
    assert again.status_code == 404
    assert w.store.get_forward(rcpt) == fwd
    assert "event=confirmed rcpt=" + rcpt in w.web.log()


def test_decline_leaves_no_target_and_the_milter_refuses(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target, "--confirm")
    link = confirm_link(w, rcpt, target)
    c = w.client()
    page = c.get(link)
    r = c.post(link, data={"csrf": csrf_of(page), "answer": "decline"})
    assert r.status_code == 200 and "will not be forwarded" in r.text
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None and fwd.target == "" and fwd.pending == ""
    assert w.rcpt_reply(rcpt).startswith("550 5.1.1")


def test_an_expired_request_is_refused_by_the_page_and_the_milter(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target, "--confirm")
    link = confirm_link(w, rcpt, target)
    secret = link.rsplit("/", 1)[1]
    # Age the request as the clock would: the forward's pending target and
    # its token both expire now.
    now = time.time()
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None
    w.store.put_forward(dataclasses.replace(fwd, pending_expires=now - 1))
    token = w.store.get_token("confirm", digest(secret), now)
    assert token is not None
    w.store.put_token(dataclasses.replace(token, expires=now + 0.5))
    time.sleep(0.6)
    c = w.client()
    assert c.get(link).status_code == 404
    assert w.rcpt_reply(rcpt).startswith("550 5.2.1")
    assert "(until" in w.fm.fwdctl("forward", "show", rcpt).stdout
    assert "expired=" + target in w.fm.fwdctl("forward", "show", rcpt).stdout


def test_an_active_forward_keeps_its_target_until_the_new_one_confirms(w: World) -> None:
    rcpt, old = new_pair("bob")
    new = old.replace("bob+", "carol+")
    w.fm.fwdctl("forward", "set", rcpt, old)
    w.fm.fwdctl("forward", "set", rcpt, new, "--confirm")
    link = confirm_link(w, rcpt, new)
    assert w.rcpt_reply(rcpt).startswith("250")
    w.mail.wait_for(old, match=lambda m: m.email["Subject"] == "hi")
    c = w.client()
    page = c.get(link)
    assert f"goes to {old} until you confirm" in page.text
    c.post(link, data={"csrf": csrf_of(page), "answer": "confirm"})
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None and fwd.target == new


# -- sign-in, the record, its changes --------------------------------------------


def test_sign_in_by_mail_then_see_and_change_the_record(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target, "--contact", f"c{unique()}@mobile.example")
    c = w.client()
    sign_in(w, c, rcpt, target)
    page = c.get("/me")
    assert target in page.text and "Nothing is held" in page.text
    contact = f"new{unique()}@mobile.example"
    r = c.post(
        "/me/update", data={"csrf": csrf_of(page), "contact": contact, "null_sender": "hold"}
    )
    assert r.status_code == 200 and "Saved." in r.text
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None and fwd.contact == contact and fwd.null_sender == "hold"
    # A new target: pending, confirmed from the mail it gets.
    new = target.replace("alice+", "dave+")
    r = c.post("/me/update", data={"csrf": csrf_of(page), "target": new, "contact": contact})
    assert "A confirmation link went to " + new in r.text
    assert f"Waiting for confirmation: <strong>{new}</strong>" in r.text
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None and fwd.target == target and fwd.pending == new
    link = confirm_link(w, rcpt, new)
    page2 = c.get(link)
    assert "owner" in page2.text
    c.post(link, data={"csrf": csrf_of(page2), "answer": "confirm"})
    assert "Waiting for confirmation" not in c.get("/me").text
    assert new in c.get("/me").text
    log = w.web.log()
    assert f"event=signin rcpt={rcpt}" in log and f"event=update rcpt={rcpt}" in log


def test_a_sign_in_link_works_once_and_signing_out_ends_the_session(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    c = w.client()
    c.post("/api/v1/sign-in", json={"address": rcpt})
    body = w.body(w.mail_to(target, f"Sign in to manage {rcpt}"))
    link = link_in(body, w.web.base_url, "/sign-in/")
    secret = link.rsplit("/", 1)[1]
    page = c.get(link)
    assert c.post(link, data={"csrf": csrf_of(page)}).status_code == 303
    other = w.client()
    page = other.get(link)
    assert page.status_code == 404
    csrf = other.cookies["fwdweb_csrf"]  # the error page set it: a valid form
    assert other.post(link, data={"csrf": csrf}).status_code == 404
    me = c.get("/me")
    assert c.post("/sign-out", data={"csrf": csrf_of(me)}).status_code == 200
    assert c.get("/me").status_code == 303
    assert secret not in w.web.log()  # tokens never reach the log


def test_delete_with_moved_to_is_answered_551_by_the_milter(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    c = w.client()
    sign_in(w, c, rcpt, target)
    page = c.get("/me")
    moved = f"m{unique()}@elsewhere.example"
    r = c.post("/me/delete", data={"csrf": csrf_of(page), "moved_to": moved})
    assert r.status_code == 400  # the box was not ticked
    assert w.store.get_forward(rcpt) is not None and w.store.get_forward(rcpt).active  # type: ignore[union-attr]
    r = c.post("/me/delete", data={"csrf": csrf_of(page), "moved_to": moved, "really": "yes"})
    assert r.status_code == 200 and moved in r.text
    assert w.rcpt_reply(rcpt) == f"551 5.1.6 User not local; please try <{moved}>"
    assert c.get("/me").status_code == 303  # the session ended with the record


# -- the JSON API ---------------------------------------------------------------------


def test_api_get_patch_delete_with_a_bearer_token(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    c = w.client()
    sign_in(w, c, rcpt, target)
    token = api_token(w, c)
    api = w.http(w.web.base_url + "/api/v1", {"Authorization": f"Bearer {token}"})
    got = api.get(f"/forwards/{rcpt}").json()
    assert got["target"] == target and got["pending"] is None and got["held"] == []
    assert api.get(f"/forwards/{rcpt.upper()}").status_code == 200  # addresses ignore case
    r = api.patch(f"/forwards/{rcpt}", json={"null_sender": "hold", "contact": ""})
    assert r.status_code == 200 and r.json()["null_sender"] == "hold"
    assert api.patch(f"/forwards/{rcpt}", json={"null_sender": "drop"}).status_code == 400
    assert api.patch(f"/forwards/{rcpt}", json={"colour": "red"}).status_code == 400
    new = target.replace("alice+", "erin+")
    r = api.patch(f"/forwards/{rcpt}", json={"target": new})
    assert r.json()["target"] == target and r.json()["pending"]["target"] == new
    link = confirm_link(w, rcpt, new)
    # Asking for the target it has withdraws the pending one, and its link.
    r = api.patch(f"/forwards/{rcpt}", json={"target": target})
    assert r.json()["target"] == target and r.json()["pending"] is None
    assert w.client().get(link).status_code == 404
    moved = f"m{unique()}@elsewhere.example"
    r = api.request("DELETE", f"/forwards/{rcpt}", json={"moved_to": moved})
    assert r.json() == {"address": rcpt, "deleted": True, "moved_to": moved}
    assert w.rcpt_reply(rcpt).startswith("551 5.1.6")
    assert api.get(f"/forwards/{rcpt}").status_code == 401  # tokens end with the record


def test_a_policy_set_by_the_api_is_the_stores_and_the_milters(w: World) -> None:
    """On SQLite and Redis: what a recipient sets is the Forward the milter
    reads, what fwdctl shows as the recipient's, and what the milter does."""
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    c = w.client()
    sign_in(w, c, rcpt, target)
    api = w.http(w.web.base_url + "/api/v1", {"Authorization": f"Bearer {api_token(w, c)}"})
    softfail = f"s{unique()}@softfail.example"
    assert str(w.mail.send_from_outside(w.border, softfail, [rcpt], "a").rcpt(rcpt)).startswith(
        "250"
    )
    r = api.patch(
        f"/forwards/{rcpt}",
        json={
            "spf_actions": {"softfail": "reject"},
            "rewrite": "srs",
            "add_trusted": "192.0.2.9/24",
        },
    )
    assert r.status_code == 200, r.text
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None
    assert (fwd.spf_actions, fwd.rewrite, fwd.trusted) == (
        (("softfail", "reject"),),
        "srs",
        ("192.0.2.0/24",),
    )
    shown = json.loads(w.fm.fwdctl("forward", "show", rcpt, "--json").stdout)["policy"]
    assert shown == r.json()["policy"]
    assert shown["spf"]["softfail"] == {"value": "reject", "source": "recipient"}
    assert str(w.mail.send_from_outside(w.border, softfail, [rcpt], "b").rcpt(rcpt)).startswith(
        "550"
    )


def test_revoked_and_wrong_tokens_are_refused(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    c = w.client()
    sign_in(w, c, rcpt, target)
    token = api_token(w, c, "laptop")
    page = c.get("/me")
    assert "laptop" in page.text and token not in page.text  # shown once only
    stored = w.store.tokens("api", rcpt, time.time())
    assert [t.digest for t in stored] == [digest(token)]  # only the hash is kept
    url = f"/api/v1/forwards/{rcpt}"
    auth = {"Authorization": f"Bearer {token}"}
    assert c.get(url, headers=auth).status_code == 200
    assert c.get(url, headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert c.get(url).status_code == 401
    c.post("/me/revoke", data={"csrf": csrf_of(page), "name": "laptop"})
    assert c.get(url, headers=auth).status_code == 401
    assert "event=api-auth-failed" in w.web.log()


def test_capabilities_and_openapi_are_public(w: World) -> None:
    c = w.client()
    caps = c.get("/api/v1/capabilities").json()
    assert caps["api_version"] == 1
    assert caps["srs"] == {"enabled": True, "domain": "fwd.example", "max_age_days": 21}
    assert caps["spf"]["checked"] and caps["spf"]["actions"]["fail"] == "reject"
    assert caps["held_mail"]["retention_days"] == 30
    assert caps["targets_confirmed"] is True
    doc = c.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]["/forwards/{address}"]) >= {"get", "patch", "delete"}


# -- security ---------------------------------------------------------------------------


def test_another_recipients_record_is_out_of_reach(w: World) -> None:
    mine, my_target = new_pair()
    theirs, their_target = new_pair("frank")
    w.fm.fwdctl("forward", "set", mine, my_target)
    w.fm.fwdctl("forward", "set", theirs, their_target)
    before = w.store.get_forward(theirs)
    c = w.client()
    sign_in(w, c, mine, my_target)
    api = {"Authorization": f"Bearer {api_token(w, c)}"}
    for method, body in (("GET", None), ("PATCH", {"target": my_target}), ("DELETE", {})):
        r = c.request(method, f"/api/v1/forwards/{theirs}", json=body, headers=api)
        assert r.status_code == 404, (method, r.text)
        # The same answer as for an address that does not exist at all.
        r2 = c.request(method, f"/api/v1/forwards/n{unique()}@fwd.example", json=body, headers=api)
        assert r2.status_code == 404 and r2.json() == r.json()
    # The pages take no address: a session changes its own record only.
    page = c.get("/me")
    c.post("/me/update", data={"csrf": csrf_of(page), "contact": "x@y.example", "rcpt": theirs})
    assert w.store.get_forward(theirs) == before
    assert "event=api-denied" in w.web.log()


def test_csrf_is_checked_on_every_form(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target, "--confirm")
    link = confirm_link(w, rcpt, target)
    c = w.client()
    c.get(link)  # has the cookie now, but the form field is missing or wrong
    assert c.post(link, data={"answer": "confirm"}).status_code == 403
    assert c.post(link, data={"answer": "confirm", "csrf": "x" * 43}).status_code == 403
    fwd = w.store.get_forward(rcpt)
    assert fwd is not None and fwd.pending == target and fwd.target == ""
    # Another site's form: no cookie of ours at all.
    fresh = w.client()
    assert fresh.post("/sign-in", data={"address": rcpt, "csrf": "a" * 43}).status_code == 403
    page = c.get(link)
    c.post(link, data={"csrf": csrf_of(page), "answer": "confirm"})
    sign_in(w, c, rcpt, target)
    before = w.store.get_forward(rcpt)
    for path, data in (
        ("/me/update", {"contact": "evil@attacker.example"}),
        ("/me/delete", {"really": "yes"}),
        ("/me/tokens", {"name": "evil"}),
        ("/sign-out", {}),
    ):
        assert c.post(path, data={**data, "csrf": "b" * 43}).status_code == 403, path
    assert w.store.get_forward(rcpt) == before
    assert w.store.tokens("api", rcpt, time.time()) == []
    assert "event=csrf-failed" in w.web.log()


def test_sign_in_does_not_tell_whether_an_address_exists(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    c = w.client()
    known = c.post("/api/v1/sign-in", json={"address": rcpt})
    unknown = c.post("/api/v1/sign-in", json={"address": f"n{unique()}@fwd.example"})
    malformed = c.post("/api/v1/sign-in", json={"address": "not an address"})
    assert known.status_code == unknown.status_code == malformed.status_code == 202
    assert known.json() == unknown.json() == malformed.json()
    page = c.get("/")
    a = c.post("/sign-in", data={"csrf": csrf_of(page), "address": rcpt})
    b = c.post("/sign-in", data={"csrf": csrf_of(page), "address": "nobody@fwd.example"})
    assert a.status_code == b.status_code == 200
    assert a.text.replace(rcpt, "X") == b.text.replace("nobody@fwd.example", "X")


def test_sign_in_mails_are_limited_per_address_and_requests_per_client(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    for i in range(PER_ADDRESS + 2):  # each from another client
        r = w.client(f"127.8.0.{i + 1}").post("/api/v1/sign-in", json={"address": rcpt})
        assert r.status_code == 202
    w.mail.wait_idle()
    time.sleep(0.5)
    got = [
        m
        for m in w.mail.sink.messages()
        if m.is_for(target) and "Sign in" in str(m.email["Subject"])
    ]
    assert len(got) == PER_ADDRESS
    assert "reason=address-rate" in w.web.log()
    c = w.client("127.8.1.9")
    codes = [
        c.post("/api/v1/sign-in", json={"address": f"n{unique()}@fwd.example"}).status_code
        for _ in range(PER_CLIENT + 1)
    ]
    assert codes == [202] * PER_CLIENT + [429]
    assert w.client("127.8.1.10").post("/api/v1/sign-in", json={"address": rcpt}).status_code == 202


def test_what_a_user_typed_is_escaped_in_pages(w: World) -> None:
    nasty = "x<script>alert(1)</script>@fwd.example"
    c = w.client()
    page = c.get("/")
    r = c.post("/sign-in", data={"csrf": csrf_of(page), "address": nasty})
    assert "<script>" not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    sign_in(w, c, rcpt, target)
    me = c.get("/me")
    c.post("/me/update", data={"csrf": csrf_of(me), "contact": 'a"<b>@x.example'})
    r = c.post("/me/tokens", data={"csrf": csrf_of(me), "name": "<img src=x onerror=alert(1)>"})
    text = c.get("/me").text
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<b>" not in text and "&lt;b&gt;" in text
    assert (
        "Content-Security-Policy" in r.headers
        and "script-src" not in r.headers["Content-Security-Policy"]
    )


def test_the_web_service_runs_without_the_srs_secrets(w: World) -> None:
    secrets_file = w.web.settings["srs"]["secrets_file"]
    assert "no-such" in secrets_file
    assert w.client().get("/api/v1/capabilities").status_code == 200


def test_store_token_rows_hold_digests_only(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target, "--confirm")
    secret = confirm_link(w, rcpt, target).rsplit("/", 1)[1]
    assert len(secret) >= 43  # 256 bits in base64url
    [token] = w.store.tokens("confirm", rcpt, time.time())
    assert token == WebToken(
        "confirm",
        digest(secret),
        rcpt,
        name=target,
        data="admin",
        created=token.created,
        expires=token.expires,
    )
    assert 71.9 * 3600 < token.expires - token.created <= 72 * 3600


def test_held_mail_for_the_target_is_shown_with_when_why_and_discard_date(w: World) -> None:
    rcpt, target = new_pair()
    w.fm.fwdctl("forward", "set", rcpt, target)
    held_at = time.time() - 3 * 86400
    w.store.hold(
        HeldEntry(
            target=target,
            entry_id="border/4AbCdE",
            state="H",
            sender=f"s{unique()}@softfail.example",
            rcpt=rcpt,
            queue_id="4AbCdE",
            host="border",
            reason="550 5.2.2 mailbox full",
            held_at=held_at,
        )
    )
    c = w.client()
    sign_in(w, c, rcpt, target)
    page = c.get("/me").text
    assert "550 5.2.2 mailbox full" in page and "3 days" in page
    discard = time.strftime("%Y-%m-%d", time.gmtime(held_at + 30 * 86400))
    assert discard in page
    token = api_token(w, c)
    [held] = c.get(f"/api/v1/forwards/{rcpt}", headers={"Authorization": f"Bearer {token}"}).json()[
        "held"
    ]
    assert held["reason"] == "550 5.2.2 mailbox full" and held["state"] == "H"
    assert held["discard_at"] == held_at + 30 * 86400
    assert 3 * 86400 - 5 < held["age_seconds"] < 3 * 86400 + 60
    w.store.drop(target, "border/4AbCdE")
