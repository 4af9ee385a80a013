"""The Debian package, as a mail admin meets it: built, installed, run, purged.

The package is built from a copy of this tree (``dpkg-buildpackage -b -us
-uc``; nothing is built in the work tree), checked with lintian, installed
with ``apt-get install ./fwdmilter_*.deb``, and then used as docs/install.md
says: the default configuration refuses to start until ``srs.domain`` is set;
once it is, ``fwdmilter`` from /usr/bin runs as user fwdmilter with the
installed configuration, socket folder and store, a private Postfix (the
harness's BORDER) hands it one message, and the sink receives it forwarded
with the SRS sender that ``fwdctl srs forward`` prints. Then ``apt-get
remove`` (everything of the admin's stays) and ``apt-get purge`` (nothing is
left but the user, as Debian policy advises).

No systemd runs as PID 1 here, so the maintainer scripts start nothing: the
daemon is run by the test, never through the unit. The machine is left as it
was found: folders of the package's (scripts/run makes /var/lib/fwdmilter
too) are moved aside and put back, and a fwdmilter user that the package
made is removed at the end.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fwdmilter_proc import toml
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.proc import wait_until
from tests.harness.redis import RedisServer
from tests.harness.smtp import unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: Debian's tools, not a Python that a developer put first on PATH: the
#: package is built and run with /usr/bin/python3.
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]

#: What fwdmilter-web loads before it serves, with the launcher's path.
WEB_IMPORTS = (
    "import sys; sys.path.insert(0, '/usr/share/fwdmilter/lib'); "
    "import fwdweb.app, uvicorn, starlette, multipart, jinja2; "
    "from fwdmilter import classify"
)
CONFIG = Path("/etc/fwdmilter/fwdmilter.toml")
SECRETS = Path("/etc/fwdmilter/srs-secrets")
STORE_DIR = Path("/var/lib/fwdmilter")
POSTFIX_DIR = Path("/var/spool/postfix/fwdmilter")
SOCKET = POSTFIX_DIR / "milter.sock"
#: Everything of the package's that is not in its file list: made by its
#: maintainer scripts or by systemd (/run/fwdmilter), or by scripts/run.
STATE = (Path("/etc/fwdmilter"), STORE_DIR, Path("/run/fwdmilter"), POSTFIX_DIR)
#: Where anything named after the package may be left behind.
SCANNED = (
    "/etc",
    "/lib/systemd",
    "/usr/lib",
    "/usr/bin",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/run",
)


_TEMP_FOLDER = re.compile(r"fwdmilter-[a-z0-9-]+-[a-z0-9_]{8}")


def run(
    *argv: str, check: bool = True, timeout: float = 180, **kw: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, env=ENV, timeout=timeout, check=False, **kw
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr}"
        )
    return done


def as_fwdmilter(*argv: str) -> subprocess.CompletedProcess[str]:
    """A command as the daemon's user, the way the unit runs it."""
    return run("runuser", "-u", "fwdmilter", "--", *argv, check=False, cwd="/")


def named_after_package() -> set[str]:
    found: set[str] = set()
    for root in SCANNED:
        for folder, dirs, files in os.walk(root):
            if folder.startswith(("/var/cache/apt", "/var/log", "/var/tmp", "/run/user")):
                dirs[:] = []
                continue
            # Temporary folders of the harness and the benchmarks
            # (tempfile.mkdtemp: "fwdmilter-e2e-" and 8 random characters), of
            # this session or another running beside it, are no package's.
            dirs[:] = [d for d in dirs if not _TEMP_FOLDER.fullmatch(d)]
            found |= {f"{folder}/{n}" for n in dirs + files if "fwdmilter" in n or "fwdctl" in n}
    return found


def installed() -> bool:
    done = run("dpkg-query", "-W", "-f=${Status}", "fwdmilter", check=False)
    return "installed" in done.stdout and "not-installed" not in done.stdout


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built from a copy of the tracked and new files of this tree."""
    build = tmp_path_factory.mktemp("deb")
    src = build / "fwdmilter"
    names = run(
        "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO
    ).stdout.split("\0")
    for name in filter(None, names):
        origin, copy = REPO / name, src / name
        if not origin.exists() and not origin.is_symlink():
            continue  # deleted, not yet committed
        copy.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            copy.symlink_to(origin.readlink())
        else:
            shutil.copy2(origin, copy)
    run("dpkg-buildpackage", "-b", "-us", "-uc", cwd=src, timeout=300)
    debs = sorted(build.glob("fwdmilter_*_all.deb"))
    assert len(debs) == 1, sorted(p.name for p in build.iterdir())
    assert not (REPO / "debian" / "fwdmilter").exists(), "built in the work tree"
    return debs[0]


def test_lintian_finds_nothing(deb: Path) -> None:
    """Errors, warnings, information and pedantic tags alike; what remains on
    purpose is explained in debian/fwdmilter.lintian-overrides."""
    changes = next(deb.parent.glob("fwdmilter_*.changes"))
    done = run("lintian", "--pedantic", "--no-tag-display-limit", str(changes), check=False)
    tags = [line for line in done.stdout.splitlines() if line[:3] in ("E: ", "W: ", "I: ", "P: ")]
    assert tags == [], done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def machine_put_back(aside: Path) -> Iterator[None]:
    """Move the package's folders aside, and put them and the users back after."""
    had_user = _user_exists()
    moved = []
    for path in STATE:
        if path.exists():
            target = aside / path.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
            moved.append((target, path))
    try:
        yield
    finally:
        if installed():
            run(*APT, "purge", "fwdmilter", check=False)
        if not had_user and _user_exists():
            run("userdel", "fwdmilter", check=False)
            run("groupdel", "fwdmilter", check=False)
        for target, path in moved:
            if path.exists():
                shutil.rmtree(path)
            shutil.move(target, path)


def _user_exists() -> bool:
    try:
        pwd.getpwnam("fwdmilter")
    except KeyError:
        return False
    return True


def configure(mail: MailWorld, submit_port: int, postfix_dir: Path) -> None:
    """What the admin does after install: set the domain, and (for this
    sandbox) the test DNS server and the private Postfix."""
    settings: dict[str, dict[str, Any]] = tomllib.loads(CONFIG.read_text())
    changes: dict[str, dict[str, Any]] = {
        "milter": {"hostname": "border.fwd.example"},
        "srs": {"domain": "fwd.example"},
        "forwarding": {"domains": ["fwd.example"]},
        "dns": {"nameservers": ["127.0.0.1"], "port": mail.dns.port, "timeout": 1.5},
        "mta": {"submit": f"127.0.0.1:{submit_port}", "postfix_config_dir": str(postfix_dir)},
        "trusted": {"networks": ["127.0.0.1/32"]},
    }
    for section, values in changes.items():
        settings.setdefault(section, {}).update(values)
    CONFIG.write_text(toml(settings))


def test_install_run_with_postfix_then_purge(
    deb: Path, mail: MailWorld, border_factory: BorderFactory, tmp_path: Path
) -> None:
    if installed():
        pytest.skip("a fwdmilter package is installed on this machine: not ours to purge")
    assert not Path("/run/systemd/system").exists(), "systemd runs here: the unit would start"
    before = named_after_package()
    with machine_put_back(tmp_path / "aside"):
        run(*APT, "install", "--no-install-recommends", str(deb))
        files = run("dpkg", "-L", "fwdmilter").stdout.split()
        for path in (
            "/usr/bin/fwdmilter",
            "/usr/bin/fwdctl",
            "/lib/systemd/system/fwdmilter.service",
            "/lib/systemd/system/fwdctl-expire.timer",
            "/usr/lib/sysusers.d/fwdmilter.conf",
            "/usr/lib/tmpfiles.d/fwdmilter.conf",
            "/usr/share/man/man8/fwdmilter.8.gz",
            "/usr/share/man/man8/fwdctl.8.gz",
            "/usr/bin/fwdmilter-web",
            "/lib/systemd/system/fwdmilter-web.service",
            "/usr/share/man/man8/fwdmilter-web.8.gz",
            "/usr/share/doc/fwdmilter/copyright",
            "/usr/share/doc/fwdmilter/install.md.gz",
        ):
            assert path in files
        conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "fwdmilter").stdout
        assert str(CONFIG) in conffiles
        unit = Path("/lib/systemd/system/fwdmilter.service").read_text()
        assert "ExecStart=/usr/bin/fwdmilter --config /etc/fwdmilter/fwdmilter.toml\n" in unit
        # The man pages are the parsers': every option is there.
        page = gzip.decompress(Path("/usr/share/man/man8/fwdctl.8.gz").read_bytes()).decode()
        assert "\\-\\-null\\-sender" in page and '.SS "held requeue"' in page
        page = gzip.decompress(Path("/usr/share/man/man8/fwdmilter.8.gz").read_bytes()).decode()
        assert "\\-\\-check\\-config" in page
        # The web service runs from the installed files: Debian's python3 with
        # the private starlette and uvicorn, Debian's jinja2 (its app imports
        # them all at start).
        web = run("/usr/bin/fwdmilter-web", "--version").stdout
        assert web.startswith("fwdmilter-web ")
        run("/usr/bin/python3", "-c", WEB_IMPORTS)
        assert (
            "ExecStart=/usr/bin/fwdmilter-web "
            in Path("/lib/systemd/system/fwdmilter-web.service").read_text()
        )

        # The user, the secret, the store's folder, Postfix's socket folder.
        user = pwd.getpwnam("fwdmilter")
        assert user.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin")
        st = SECRETS.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, user.pw_gid)
        secret = SECRETS.read_text()
        assert len(secret.strip()) >= 32
        st = STORE_DIR.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, user.pw_uid)
        st = POSTFIX_DIR.stat()
        assert stat.S_IMODE(st.st_mode) == 0o2750 and st.st_uid == user.pw_uid

        # Not started until the admin sets srs.domain.
        done = as_fwdmilter("/usr/bin/fwdmilter", "--check-config")
        assert done.returncode == 78, done.stdout + done.stderr
        assert "srs.domain" in done.stderr

        # A reinstall (an upgrade does the same) keeps the secret.
        run(*APT, "install", "--reinstall", "--no-install-recommends", str(deb))
        assert SECRETS.read_text() == secret

        border = border_factory(milter=f"unix:{SOCKET}", start=False)
        configure(mail, border.port, border.config_dir)
        done = as_fwdmilter("/usr/bin/fwdmilter", "--check-config")
        assert done.returncode == 0, done.stdout + done.stderr
        assert 'domain = "fwd.example"' in done.stdout

        log = tmp_path / "fwdmilter.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                ["/usr/bin/fwdmilter"],
                user="fwdmilter",
                group="fwdmilter",
                extra_groups=[],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
                env=ENV,
                start_new_session=True,
            )
        try:
            wait_until(
                lambda: "listening on" in log.read_text() or daemon.poll() is not None,
                30,
                "the installed fwdmilter listens",
            )
            assert daemon.poll() is None, log.read_text()
            assert f"listening on unix:{SOCKET}" in log.read_text()
            border.start()

            tok = unique()
            rcpt, target = f"p{tok}@fwd.example", f"alice+{tok}@inner.example"
            local = f"s{tok}"
            sender = f"{local}@pass.example"
            run("/usr/bin/fwdctl", "forward", "set", rcpt, target)
            srs = run("/usr/bin/fwdctl", "srs", "forward", sender).stdout.strip()
            assert srs.startswith("SRS0=") and srs.endswith(f"=pass.example={local}@fwd.example")
            t = mail.send_from_outside(border, sender, [rcpt], f"deb {tok}")
            assert t.accepted, t
            got = mail.wait_for(target)
            assert got.mail_from == srs
            assert run("/usr/bin/fwdctl", "srs", "reverse", srs).stdout.strip() == sender
        finally:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
            status = daemon.wait(30)
        assert status == 0, log.read_text()
        text = log.read_text()
        assert "action=forward" in text
        # The installed files ran, not this tree's.
        assert "Traceback" not in text
        where = run(
            "/usr/bin/python3", "-c", "import fwdmilter; print(fwdmilter.__file__)", cwd="/"
        )
        assert where.stdout.strip() == "/usr/lib/python3/dist-packages/fwdmilter/__init__.py"

        # The package's own redis-py (Debian 12's 4.3.4 cannot open a unix
        # socket with a connect timeout): the store copied into a Redis.
        redis = RedisServer(tmp_path / "redis", unix_socket=True)
        try:
            done = run("/usr/bin/fwdctl", "store", "migrate", "--to", redis.unix_url)
            assert "copied 1 forwards" in done.stdout, done.stdout
            assert redis.cli("DBSIZE").strip() != "0"
        finally:
            redis.stop()

        # remove keeps the admin's configuration, secret and store ...
        run(*APT, "remove", "fwdmilter")
        assert not Path("/usr/bin/fwdmilter").exists()
        assert SECRETS.read_text() == secret
        assert "fwd.example" in CONFIG.read_text()
        assert (STORE_DIR / "state.db").exists()
        # ... purge deletes them, and every file of the package's.
        run(*APT, "purge", "fwdmilter")
        assert not installed()
        left = [p for p in files if os.path.lexists(p) and not Path(p).is_dir()]
        assert left == []
        assert not Path("/usr/lib/python3/dist-packages/srs").exists()
        assert named_after_package() - before == set()
        # What policy allows to stay: the user and its group.
        assert _user_exists()
