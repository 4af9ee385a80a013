"""fwdmilter-web, run as the service it is (uvicorn on a free loopback port).

It reads the configuration of the milter it serves beside (same store, same
``mta.submit``), with ``[web]`` settings of its own, and an SRS secrets file
that does not exist: the web service must never need the secrets.

    web = FwdWeb(fm, workdir, settings={"web": {"signin_per_address": 3}})
    web.start(); web.url("/api/v1/capabilities"); web.log(); web.stop()

``web_settings(port)`` gives the ``[web]`` table the milter's own
configuration needs too (fwdctl mails confirmation links under base_url).
"""

from __future__ import annotations

import copy
import http.client
import re
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness.fwdmilter_proc import FwdMilter, toml
from tests.harness.proc import Process, free_port, wait_until

__all__ = ["FwdWeb", "web_settings", "link_in"]

_REPO = Path(__file__).resolve().parents[2]


def web_settings(port: int, **extra: Any) -> dict[str, Any]:
    return {"listen": f"127.0.0.1:{port}", "base_url": f"http://127.0.0.1:{port}", **extra}


def link_in(body: str, base_url: str, path: str) -> str:
    """The one link under ``base_url + path`` in a mail's text."""
    found = re.findall(re.escape(base_url.rstrip("/") + path) + r"[A-Za-z0-9_\-]+", body)
    if len(found) != 1:
        raise AssertionError(f"expected one {path} link in:\n{body}")
    return str(found[0])


class FwdWeb:
    """The web service under test, beside the milter ``fm``."""

    def __init__(
        self,
        fm: FwdMilter,
        workdir: Path,
        *,
        port: int | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = port or free_port()
        cfg: dict[str, dict[str, Any]] = copy.deepcopy(fm.settings)
        cfg.setdefault("web", {}).update(web_settings(self.port))
        # Not there at all: the web service must not read the SRS secrets.
        cfg["srs"]["secrets_file"] = str(workdir / "no-such-srs-secrets")
        for section, values in (settings or {}).items():
            cfg.setdefault(section, {}).update(values)
        self.settings = cfg
        self.config_path = workdir / "fwdmilter-web.toml"
        self.log_path = workdir / "fwdmilter-web.log"
        self.proc: Process | None = None

    @property
    def base_url(self) -> str:
        return str(self.settings["web"]["base_url"])

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def start(self, ca_file: str | None = None) -> None:
        """Start and wait until it answers (over TLS checked with ``ca_file``)."""
        self.ca_file = ca_file
        self.config_path.write_text(toml(self.settings))
        self.proc = Process(
            [sys.executable, "-m", "fwdweb.app", "--config", str(self.config_path)],
            self.log_path,
            cwd=_REPO,
            env={"PYTHONUNBUFFERED": "1"},
        )
        proc = self.proc

        def up() -> bool:
            if not proc.alive():
                raise RuntimeError("fwdmilter-web died at start:\n" + self.log())
            try:
                conn: http.client.HTTPConnection
                if self.base_url.startswith("https://"):
                    ctx = ssl.create_default_context(cafile=self.ca_file)
                    conn = http.client.HTTPSConnection(
                        "127.0.0.1", self.port, timeout=1, context=ctx
                    )
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/api/v1/capabilities")
                ok = conn.getresponse().status == 200
                conn.close()
                return ok
            except OSError:
                return False

        try:
            wait_until(up, 20, "fwdmilter-web answers")
        except TimeoutError:
            raise TimeoutError("fwdmilter-web did not start:\n" + self.log()) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop(timeout=15)
        self.proc = None
        return code
