"""fwdmilter-web serving HTTPS itself (web.tls_cert_file, web.tls_key_file),
without a reverse proxy: the certificate is the one configured, and the
cookies are Secure because base_url is https."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.proc import free_port
from tests.harness.redis import make_tls_files
from tests.harness.web_proc import FwdWeb

pytestmark = pytest.mark.e2e


def test_https_with_its_own_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    # The milter is not started: its configuration is all the service reads.
    fm = FwdMilter(tmp_path / "unused.sock", tmp_path / "milter", dns_port=53)
    web = FwdWeb(
        fm,
        tmp_path / "web",
        port=port,
        settings={
            "web": {
                "base_url": f"https://127.0.0.1:{port}",
                "tls_cert_file": str(tls.server_cert),
                "tls_key_file": str(tls.server_key),
            }
        },
    )
    web.start(ca_file=str(tls.ca))
    try:
        with httpx.Client(
            base_url=web.base_url, verify=ssl.create_default_context(cafile=str(tls.ca)), timeout=10
        ) as c:
            r = c.get("/")
            assert r.status_code == 200
            cookie = r.headers["set-cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie
            assert c.get("/api/v1/capabilities").json()["api_version"] == 1
        with pytest.raises(httpx.ConnectError), httpx.Client(timeout=5) as plain:
            # Not a CA the client knows: refused, as a browser would.
            plain.get(web.url("/"))
    finally:
        web.stop()
