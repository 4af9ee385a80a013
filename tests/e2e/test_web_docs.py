"""docs/web.md's ``http`` blocks, run against a real fwdmilter-web.

The doc's host is ``https://fwd.example.net``; here the service answers on a
free loopback port with the doc's own domain (``fwd.example.net``), so only
the URL is substituted. Before the block runs, ``bob@fwd.example.net``
forwards to ``bob@example.com`` (its mail reaches the sink's "internet"
listener), bob signs in from the mailed link and makes the API token that
``$TOKEN`` holds, as a recipient does on the record page. Each ``$ curl``
line runs in order; what it prints must match the doc in substance
(tests/docs/sandbox.py's ``match_output``: ``...`` stands for any text).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.docs.markdown import REPO, blocks, commands
from tests.docs.sandbox import Mismatch, match_output
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import RuntimeDir
from tests.harness.proc import free_port
from tests.harness.web_proc import FwdWeb, link_in, web_settings

pytestmark = pytest.mark.e2e

DOC_URL = "https://fwd.example.net"
DOMAIN = "fwd.example.net"


@pytest.fixture(scope="module")
def web(
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FwdMilter, FwdWeb]]:
    workdir = tmp_path_factory.mktemp("web-docs")
    port = free_port()
    fm = FwdMilter(
        runtime.socket("fwd-web-docs"),
        workdir / "milter",
        dns_port=mail.dns.port,
        hostname=f"mx.{DOMAIN}",
        settings={
            "srs": {"domain": DOMAIN},
            "forwarding": {"domains": [DOMAIN]},
            "web": web_settings(port),
        },
    )
    border = border_factory(milter=fm.spec, start=False, route_bounces=False)
    fm.serve(border)
    border.start()
    service = FwdWeb(fm, workdir / "web", port=port)
    service.start()
    try:
        yield fm, service
    finally:
        service.stop()
        fm.stop()


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def _token_for_bob(fm: FwdMilter, service: FwdWeb, mail: MailWorld) -> str:
    fm.fwdctl(
        "forward", "set", f"bob@{DOMAIN}", "bob@example.com", "--contact", "bob@mobile.example"
    )
    with httpx.Client(base_url=service.base_url, timeout=20) as c:
        c.post("/api/v1/sign-in", json={"address": f"bob@{DOMAIN}"})
        msg = mail.wait_for("bob@example.com", match=lambda m: "Sign in" in str(m.email["Subject"]))
        part = msg.email.get_body(("plain",))
        assert part is not None
        link = link_in(str(part.get_content()), service.base_url, "/sign-in/")  # type: ignore[attr-defined]
        page = c.get(link)
        assert c.post(link, data={"csrf": _csrf(page)}).status_code == 303
        me = c.get("/me")
        made = c.post("/me/tokens", data={"csrf": _csrf(me), "name": "docs"})
        found = re.search(r'id="new-token">([^<]+)<', made.text)
        assert found, made.text
        return found.group(1)


def test_the_http_examples_of_web_md(web: tuple[FwdMilter, FwdWeb], mail: MailWorld) -> None:
    fm, service = web
    token = _token_for_bob(fm, service, mail)
    fm.fwdctl("forward", "set", f"alice@{DOMAIN}", "alice@example.com")
    cmds = [c for b in blocks(REPO / "docs" / "web.md") if b.tag == "http" for c in commands(b)]
    assert len(cmds) >= 5
    env = {**os.environ, "TOKEN": token}
    for cmd in cmds:
        assert cmd.text.startswith("curl "), f"{cmd.where}: only curl in http blocks"
        script = cmd.text.replace(DOC_URL, service.base_url.rstrip("/"))
        done = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"{cmd.where}: {cmd.text}\n{done.stderr}"
        result = match_output(cmd.output, done.stdout)
        assert not isinstance(result, Mismatch), f"{cmd.where}: {cmd.text}\n{result}"
    # The PATCH above asked bob@new.example to confirm: its mail went out.
    mail.wait_for("bob@new.example", match=lambda m: "Confirm" in str(m.email["Subject"]))
