"""fwdmilter-web: the recipient's side of the forwarder, over HTTP.

    fwdmilter-web [--config PATH]

A Starlette application under uvicorn, pages from Jinja2 templates, on the
store the milter uses. Flows (docs/web.md):

- sign-in by mail: an address in, a link mailed to that forward's current
  target, the same answer whether or not the address exists; the link's GET
  shows a button, its POST signs in (a session cookie);
- the recipient's record: see, change (a new target waits for confirmation
  from the mail it is sent), delete with an optional new address (551);
- confirmation pages for pending targets: GET shows, only POST acts;
- the JSON API under /api/v1/ with named bearer tokens, and its OpenAPI
  document at /api/v1/openapi.json.

Tokens: 256 random bits, stored as SHA-256 only, compared by that digest
(a lookup by hash, so no timing on the secret itself) and, where they act,
used once. Forms carry a CSRF token that must equal their cookie's
(double submit, compared with hmac.compare_digest); cookies are HttpOnly,
SameSite=Strict, and Secure when ``web.base_url`` is https. Every change,
sign-in and failed attempt is logged on ``fwdweb.audit`` (key=value, never
a token). The service never reads the SRS secrets.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from fwdmilter import __version__, addr, config, confirm
from fwdmilter.errors import FwdmilterError, MTAError, StoreError
from fwdmilter.states import SPF_RESULTS
from fwdmilter.store.base import Forward, Store, WebToken
from fwdweb import openapi, records
from fwdweb.records import BadRequest

__all__ = ["create_app", "main"]

log = logging.getLogger("fwdweb")
audit = logging.getLogger("fwdweb.audit")

_HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "fwdweb_session"
CSRF_COOKIE = "fwdweb_csrf"
_HOUR = 3600.0

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


class Web:
    """The service's state: configuration, store, templates, clock."""

    def __init__(
        self, cfg: config.Config, store: Store, clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.secure = cfg.web.base_url.startswith("https://")
        self.base_url = cfg.web.base_url.rstrip("/")

    # -- requests ----------------------------------------------------------------

    def client(self, request: Request) -> str:
        """The client's address; a trusted proxy's X-Forwarded-For names it."""
        peer = request.client.host if request.client else "-"
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded and peer in self.cfg.web.trusted_proxies:
            return forwarded.split(",")[-1].strip() or peer
        return peer

    def session(self, request: Request) -> Forward | None:
        """The signed-in recipient's record, or None."""
        secret = request.cookies.get(SESSION_COOKIE, "")
        if not secret:
            return None
        token = self.store.get_token("session", confirm.digest(secret), self.clock())
        if token is None:
            return None
        fwd = self.store.get_forward(token.rcpt)
        return fwd if fwd is not None and not fwd.moved_to else None

    def bearer(self, request: Request) -> Forward | None:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        token = self.store.get_token("api", confirm.digest(secret.strip()), self.clock())
        if token is None:
            audit.info("event=api-auth-failed client=%s", self.client(request))
            return None
        fwd = self.store.get_forward(token.rcpt)
        return fwd if fwd is not None and not fwd.moved_to else None

    # -- responses -----------------------------------------------------------------

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any] | None = None,
        status: int = 200,
        background: BackgroundTask | None = None,
    ) -> Response:
        """A page with a CSRF token for its forms (and the cookie it must equal)."""
        csrf = request.cookies.get(CSRF_COOKIE, "")
        fresh = len(csrf) < 32
        if fresh:
            csrf = secrets.token_urlsafe(32)
        ctx = {"csrf": csrf, "domain": self.cfg.srs.domain, **(context or {})}
        response = self.templates.TemplateResponse(
            request, name, ctx, status_code=status, background=background
        )
        if fresh:
            self.set_cookie(response, CSRF_COOKIE, csrf, max_age=None)
        response.headers.update(_SECURITY_HEADERS)
        return response

    def message(self, request: Request, title: str, text: str, status: int = 200) -> Response:
        return self.page(request, "message.html", {"title": title, "text": text}, status)

    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    async def form(self, request: Request) -> dict[str, str] | None:
        """The form's fields if its CSRF token matches its cookie, else None."""
        data = await request.form()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        sent = fields.pop("csrf", "")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
            audit.info(
                "event=csrf-failed path=%s client=%s", request.url.path, self.client(request)
            )
            return None
        return fields

    def csrf_refused(self, request: Request) -> Response:
        return self.message(
            request,
            "Form expired",
            "This form was not sent from this site's own page, or it is too old."
            " Go back, reload the page and try again.",
            403,
        )

    # -- sign-in -----------------------------------------------------------------

    def start_sign_in(self, address: str, client: str) -> BackgroundTask | None:
        """Rate limits and the sign-in mail; the caller answers the same either way.

        Raises :class:`RateLimited` when this client asked too often. The mail
        is sent after the answer (a background task), so the answer takes as
        long whether or not the address exists.
        """
        now = self.clock()
        web = self.cfg.web
        if self.store.count_hit(f"signin-client:{client}", _HOUR, now) > web.signin_per_client:
            audit.info("event=signin-refused reason=client-rate client=%s", client)
            raise RateLimited
        try:
            bare = records.check_address(address, "address")
        except BadRequest:
            audit.info("event=signin-ignored reason=malformed client=%s", client)
            return None
        rcpt = addr.key(bare)
        fwd = self.store.get_forward(rcpt)
        over = self.store.count_hit(f"signin-addr:{rcpt}", _HOUR, now) > web.signin_per_address
        if fwd is None or not fwd.active:
            audit.info("event=signin-ignored reason=unknown rcpt=%s client=%s", rcpt, client)
            return None
        if over:
            audit.info("event=signin-ignored reason=address-rate rcpt=%s client=%s", rcpt, client)
            return None
        secret = confirm.new_secret()
        self.store.put_token(
            WebToken(
                "signin",
                confirm.digest(secret),
                rcpt,
                data=client,
                created=now,
                expires=now + web.signin_minutes * 60,
            )
        )
        audit.info(
            "event=signin-mailed rcpt=%s target=%s client=%s", rcpt, ",".join(fwd.targets), client
        )
        link = f"{self.base_url}/sign-in/{secret}"
        body = (
            f"Someone (from {client}) asked to sign in to the mail forwarder at\n"
            f"{self.cfg.srs.domain} as {rcpt}, whose mail comes to this mailbox.\n\n"
            f"To see and change where that mail goes, open this page and press\n"
            f"its Sign in button:\n\n    {link}\n\n"
            f"The link works once, for {web.signin_minutes:g} minutes. If you did not ask\n"
            f"for it, ignore this mail: nothing changes.\n"
        )
        # Every target: whoever reads any of them reads the address's mail.
        return BackgroundTask(self._send, fwd.targets, f"Sign in to manage {rcpt}", body)

    def _send(self, targets: Sequence[str], subject: str, body: str) -> None:
        for to in targets:
            try:
                confirm.send_mail(self.cfg, to, subject, body)
            except MTAError as exc:
                log.error("event=mail-failed to=%s error=%s", to, exc)


class RateLimited(Exception):
    """This client asked too often."""


# -- pages -------------------------------------------------------------------------


def _changes_of(fields: dict[str, str]) -> dict[str, Any]:
    """The changes a form of the record page asks for, as records.update takes
    them: the policy form's ``spf_RESULT`` selects make one ``spf_actions``."""
    changes: dict[str, Any] = {k: fields[k] for k in records.FIELDS if k in fields}
    changes.pop("spf_actions", None)
    spf = {r: fields[f"spf_{r}"] for r in SPF_RESULTS if f"spf_{r}" in fields}
    if spf:
        changes["spf_actions"] = spf
    if "add_trusted" in fields and not fields["add_trusted"].strip():
        raise BadRequest("give a network (such as 192.0.2.0/24) or a domain to trust")
    return changes


#: The SPF results in a recipient's words (RFC 7208 section 2.6).
SPF_WORDS = {
    "fail": "Mail whose sender's domain says it did not send it (SPF fail)",
    "softfail": "Mail whose sender's domain says it probably did not send it (SPF softfail)",
    "neutral": "Mail whose sender's domain will not say whether it sent it (SPF neutral)",
    "none": "Mail whose sender's domain publishes no SPF record (SPF none)",
    "permerror": "Mail whose sender's domain has a broken SPF record (SPF permerror)",
    "temperror": "Mail whose sender's SPF record could not be read just now (SPF temperror)",
}
ACTION_WORDS = {
    "reject": "refused",
    "tempfail": "refused for now (the sender's server tries again later)",
    "accept": "accepted",
}
REWRITE_WORDS = {
    "srs": "always replaced by an address here",
    "when-needed": "replaced only when needed",
    "none": "kept for verified mail",
}


def _source(source: str) -> str:
    return "your choice" if source == "recipient" else "site default"


def _policy_view(policy: dict[str, Any], fwd: Forward) -> dict[str, Any]:
    """The effective policy in plain words, and the record's own choices for the form."""
    spf = [
        {
            "result": result,
            "words": SPF_WORDS[result],
            "value": ACTION_WORDS.get(v["value"], v["value"]),
            "source": _source(v["source"]),
            "own": fwd.spf_action(result) or "inherit",
        }
        for result, v in policy["spf"].items()
    ]
    rw = policy["rewrite"]
    return {
        "spf": spf,
        "rewrite": REWRITE_WORDS.get(rw["value"], rw["value"]),
        "rewrite_source": _source(rw["source"]),
        "rewrite_note": bool(rw.get("note")),
        "rewrite_own": fwd.rewrite or "inherit",
        "trusted": list(fwd.trusted),
    }


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "-"


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(0, int(seconds // 60))} min"
    if seconds < 86400 * 2:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def build_routes(web: Web) -> list[Route | Mount]:  # noqa: PLR0915 (closures over one Web)
    cfg = web.cfg
    store = web.store

    async def home(request: Request) -> Response:
        if web.session(request) is not None:
            return RedirectResponse("/me", 303)
        return web.page(request, "signin.html")

    async def sign_in(request: Request) -> Response:
        fields = await web.form(request)
        if fields is None:
            return web.csrf_refused(request)
        try:
            task = web.start_sign_in(fields.get("address", ""), web.client(request))
        except RateLimited:
            return web.message(
                request, "Too many requests", "Too many sign-in requests; try again later.", 429
            )
        return web.page(
            request, "signin_sent.html", {"address": fields.get("address", "")}, background=task
        )

    async def sign_in_link(request: Request) -> Response:
        secret = request.path_params["secret"]
        now = web.clock()
        if request.method == "GET":
            token = store.get_token("signin", confirm.digest(secret), now)
            if token is None:
                audit.info("event=signin-failed reason=invalid-link client=%s", web.client(request))
                return _bad_link(request)
            return web.page(request, "signin_link.html", {"address": token.rcpt})
        fields = await web.form(request)
        if fields is None:
            return web.csrf_refused(request)
        token = store.take_token("signin", confirm.digest(secret), now)
        if token is None:
            audit.info("event=signin-failed reason=invalid-link client=%s", web.client(request))
            return _bad_link(request)
        session = confirm.new_secret()
        minutes = cfg.web.session_minutes
        store.put_token(
            WebToken(
                "session",
                confirm.digest(session),
                token.rcpt,
                data=web.client(request),
                created=now,
                expires=now + minutes * 60,
            )
        )
        audit.info("event=signin rcpt=%s client=%s", token.rcpt, web.client(request))
        response = RedirectResponse("/me", 303)
        web.set_cookie(response, SESSION_COOKIE, session, max_age=int(minutes * 60))
        return response

    def _bad_link(request: Request) -> Response:
        return web.message(
            request,
            "Link not valid",
            "This link was used already, has expired, or never existed. Ask for a new one.",
            404,
        )

    async def sign_out(request: Request) -> Response:
        fields = await web.form(request)
        if fields is None:
            return web.csrf_refused(request)
        secret = request.cookies.get(SESSION_COOKIE, "")
        if secret:
            token = store.take_token("session", confirm.digest(secret), web.clock())
            if token is not None:
                audit.info("event=signout rcpt=%s client=%s", token.rcpt, web.client(request))
        response = web.message(request, "Signed out", "You are signed out.")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def record_page(
        request: Request,
        fwd: Forward,
        *,
        notice: str = "",
        error: str = "",
        new_token: str = "",
        status: int = 200,
    ) -> Response:
        now = web.clock()
        data = records.view(cfg, store, fwd, now)
        for h in data["held"]:
            h["when"] = _when(h["held_at"])
            h["age"] = _age(h["age_seconds"])
            h["discard"] = _when(h["discard_at"])
        tokens = store.tokens("api", fwd.rcpt, now)
        return web.page(
            request,
            "record.html",
            {
                "r": data,
                "pending_until": _when(fwd.pending_expires),
                "updated": _when(fwd.updated),
                "notice": notice,
                "error": error,
                "new_token": new_token,
                "tokens": [{"name": t.name, "created": _when(t.created)} for t in tokens],
                "max_targets": cfg.forwarding.max_targets,
                "p": _policy_view(data["policy"], fwd),
            },
            status,
        )

    async def me(request: Request) -> Response:
        fwd = web.session(request)
        if fwd is None:
            return RedirectResponse("/", 303)
        return record_page(request, fwd)

    async def me_post(request: Request) -> Response:
        fwd = web.session(request)
        if fwd is None:
            return web.message(request, "Not signed in", "Sign in first.", 401)
        fields = await web.form(request)
        if fields is None:
            return web.csrf_refused(request)
        action = request.path_params["action"]
        client = web.client(request)
        now = web.clock()
        try:
            if action == "update":
                changes = _changes_of(fields)
                new = await run_in_threadpool(
                    records.update, cfg, store, fwd, changes, now=now, client=client
                )
                notice = "Saved."
                if new.pending and new.pending != fwd.pending:
                    current = ", ".join(new.targets) or "nobody"
                    notice += (
                        f" A confirmation link went to {new.pending}; mail keeps going to"
                        f" {current} until it is confirmed there."
                    )
                return record_page(request, new, notice=notice)
            if action == "delete":
                if fields.get("really") != "yes":
                    raise BadRequest("tick the box to confirm that forwarding should stop")
                moved = records.delete(
                    store, fwd, fields.get("moved_to", ""), now=now, client=client
                )
                text = "Mail for this address is no longer forwarded."
                if moved:
                    text += f" Senders are told (551) to write to {moved}."
                response = web.message(request, "Forwarding deleted", text)
                response.delete_cookie(SESSION_COOKIE, path="/")
                return response
            if action == "tokens":
                name = fields.get("name", "").strip()
                secret = create_api_token(fwd, name, client)
                return record_page(
                    request, fwd, notice=f"API token {name!r} created.", new_token=secret
                )
            if action == "revoke":
                name = fields.get("name", "")
                if store.delete_tokens("api", fwd.rcpt, name) == 0:
                    raise BadRequest("no such API token")
                audit.info(
                    "event=api-token-revoked rcpt=%s name=%s client=%s", fwd.rcpt, name, client
                )
                return record_page(request, fwd, notice=f"API token {name!r} revoked.")
        except BadRequest as exc:
            return record_page(request, fwd, error=str(exc), status=400)
        except MTAError:
            return record_page(
                request,
                fwd,
                error="The confirmation mail could not be sent; try later.",
                status=503,
            )
        return web.message(request, "Not found", "No such action.", 404)

    def create_api_token(fwd: Forward, name: str, client: str) -> str:
        if not name or len(name) > 64 or not name.isprintable():
            raise BadRequest("an API token needs a name (up to 64 characters)")
        existing = store.tokens("api", fwd.rcpt, web.clock())
        if any(t.name == name for t in existing):
            raise BadRequest(f"there is an API token named {name!r} already")
        if len(existing) >= cfg.web.max_api_tokens:
            raise BadRequest("too many API tokens: revoke one first")
        secret = confirm.new_secret()
        store.put_token(
            WebToken("api", confirm.digest(secret), fwd.rcpt, name=name, created=web.clock())
        )
        audit.info("event=api-token-created rcpt=%s name=%s client=%s", fwd.rcpt, name, client)
        return secret

    async def confirm_page(request: Request) -> Response:
        secret = request.path_params["secret"]
        now = web.clock()
        if request.method == "GET":
            # Mail scanners open every link: a GET only shows the question.
            token = store.get_token("confirm", confirm.digest(secret), now)
            fwd = store.get_forward(token.rcpt) if token else None
            if token is None or fwd is None or fwd.pending_at(now) != token.name:
                return _bad_link(request)
            by, mode = confirm.request_of(token)
            return web.page(
                request,
                "confirm.html",
                {
                    "rcpt": token.rcpt,
                    "target": token.name,
                    "by": by,
                    "mode": mode,
                    "current": ", ".join(fwd.targets),
                    "expires": _when(token.expires),
                },
            )
        fields = await web.form(request)
        if fields is None:
            return web.csrf_refused(request)
        choice = fields.get("answer", "")
        if choice not in ("confirm", "decline"):
            return web.message(request, "Unknown answer", "Press Confirm or Decline.", 400)
        outcome, fwd = confirm.answer(
            store, secret, choice == "confirm", now, max_targets=cfg.forwarding.max_targets
        )
        if outcome == "confirmed" and fwd is not None:
            return web.message(
                request,
                "Confirmed",
                f"Mail for {fwd.rcpt} is now forwarded to {', '.join(fwd.targets)}.",
            )
        if outcome == "too-many" and fwd is not None:
            # Not the link's fault: say what stands in the way and what helps.
            return web.message(
                request,
                "Too many targets",
                f"Mail for {fwd.rcpt} already goes to {len(fwd.targets)} addresses"
                f" ({', '.join(fwd.targets)}), the most this forwarder allows"
                f" ({cfg.forwarding.max_targets}), so it cannot also go to you: nothing is"
                f" forwarded to you. The owner of {fwd.rcpt} can remove one of them and ask again.",
                409,
            )
        if outcome == "declined" and fwd is not None:
            return web.message(
                request, "Declined", f"Mail for {fwd.rcpt} will not be forwarded to you."
            )
        return _bad_link(request)

    # -- the JSON API --------------------------------------------------------------

    def problem(status: int, text: str) -> JSONResponse:
        return JSONResponse({"error": text}, status_code=status)

    async def api_capabilities(request: Request) -> Response:
        return JSONResponse(records.capabilities(cfg))

    async def api_openapi(request: Request) -> Response:
        return JSONResponse(openapi.document(cfg, __version__))

    async def api_sign_in(request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return problem(400, 'the body must be JSON: {"address": ...}')
        address = body.get("address") if isinstance(body, dict) else None
        if not isinstance(address, str):
            return problem(400, 'the body must be JSON: {"address": ...}')
        try:
            task = web.start_sign_in(address, web.client(request))
        except RateLimited:
            return problem(429, "too many sign-in requests from this client; try again later")
        return JSONResponse(
            {
                "status": "If this address is forwarded here, a sign-in link was mailed to"
                " its current targets."
            },
            status_code=202,
            background=task,
        )

    def own(request: Request) -> Forward | Response:
        """The bearer's record, if the path names it; 401/404 otherwise."""
        fwd = web.bearer(request)
        if fwd is None:
            return JSONResponse(
                {"error": "a valid API token is needed (Authorization: Bearer TOKEN)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        asked = addr.key(request.path_params["address"])
        if asked != fwd.rcpt:
            # Never say whether another address exists.
            audit.info(
                "event=api-denied rcpt=%s asked=%s client=%s", fwd.rcpt, asked, web.client(request)
            )
            return problem(404, "no forwarding address of yours by that name")
        return fwd

    async def api_forward(request: Request) -> Response:
        found = own(request)
        if isinstance(found, Response):
            return found
        fwd = found
        now = web.clock()
        client = web.client(request)
        try:
            if request.method == "GET":
                return JSONResponse(records.view(cfg, store, fwd, now))
            body: Any = {}
            raw = await request.body()
            if raw:
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return problem(400, "the body must be a JSON object")
            if not isinstance(body, dict):
                return problem(400, "the body must be a JSON object")
            if request.method == "PATCH":
                new = await run_in_threadpool(
                    records.update, cfg, store, fwd, body, now=now, client=client
                )
                return JSONResponse(records.view(cfg, store, new, now))
            moved_to = body.get("moved_to", request.query_params.get("moved_to", ""))
            moved = records.delete(store, fwd, moved_to or "", now=now, client=client)
            return JSONResponse({"address": fwd.rcpt, "deleted": True, "moved_to": moved})
        except BadRequest as exc:
            return problem(400, str(exc))
        except MTAError:
            return problem(503, "the confirmation mail could not be sent; try again later")

    return [
        Route("/", home, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-in/{secret}", sign_in_link, methods=["GET", "POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Route("/me", me, methods=["GET"]),
        Route("/me/{action}", me_post, methods=["POST"]),
        Route("/confirm/{secret}", confirm_page, methods=["GET", "POST"]),
        Route("/api/v1/capabilities", api_capabilities, methods=["GET"]),
        Route("/api/v1/openapi.json", api_openapi, methods=["GET"]),
        Route("/api/v1/sign-in", api_sign_in, methods=["POST"]),
        Route("/api/v1/forwards/{address}", api_forward, methods=["GET", "PATCH", "DELETE"]),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]


def create_app(
    cfg: config.Config, store: Store, clock: Callable[[], float] = time.time
) -> Starlette:
    """The application over ``store``; the caller closes the store."""
    web = Web(cfg, store, clock)

    async def store_down(request: Request, exc: Exception) -> Response:
        log.error("event=store-error path=%s error=%s", request.url.path, exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "the store is unavailable; try again later"}, 503)
        return web.message(request, "Try again later", "The service has a problem now.", 503)

    app = Starlette(routes=build_routes(web), exception_handlers={StoreError: store_down})
    app.state.web = web
    return app


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fwdmilter-web`` (its man page is made from it)."""
    parser = argparse.ArgumentParser(
        prog="fwdmilter-web", description="The recipients' web service of fwdmilter."
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default: $FWDMILTER_CONFIG or {config.DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--version", action="version", version=f"fwdmilter-web {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn  # noqa: PLC0415

    from fwdmilter.store import open_store  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(name)s: %(levelname)s %(message)s"
    )
    try:
        cfg = config.load(args.config)
        if not cfg.web.base_url:
            raise config.ConfigError("web.base_url: must be set: the links the service mails")
        store = open_store(cfg.store, instance=f"{cfg.milter.hostname}-web")
    except FwdmilterError as exc:
        print(f"fwdmilter-web: {exc}", file=sys.stderr)
        return 2
    host, _, port = cfg.web.listen.rpartition(":")
    try:
        log.info("listening on %s base_url=%s", cfg.web.listen, cfg.web.base_url)
        uvicorn.run(
            create_app(cfg, store),
            host=host.strip("[]"),
            port=int(port),
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ssl_certfile=cfg.web.tls_cert_file or None,
            ssl_keyfile=cfg.web.tls_key_file or None,
        )
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
