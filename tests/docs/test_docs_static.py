"""The docs, checked without running them: tags, host commands, names.

Every code block must carry a known tag (tests/docs/markdown.py). The
commands that need a real host (``sh-host``) are checked here against the
repository: the programs they run are known ones, the units they name are in
systemd/, the paths they name are in the repository or among the install
paths of docs/install.md, the options they give fwdctl and fwdmilter exist,
the packages they install are the ones scripts/ install, and the Postfix
settings they make are those of docs/postfix.md's main.cf, which the
harness's BORDER agrees with. Config keys, metric names, SMTP replies and
links named anywhere in the docs must exist, and the generated parts of
the docs (scripts/gen_docs.py) must be current.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import functools
import io
import re
import shlex
import subprocess
import sys
import tomllib
import typing
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pytest

from fwdmilter import cli, config, replies
from fwdmilter.replies import Reply
from tests.docs import scenario
from tests.docs.markdown import (
    DATA_TAGS,
    DOCS,
    HOST_TAGS,
    REPO,
    RUN_TAGS,
    TAGS,
    Block,
    Command,
    all_blocks,
    blocks,
    commands,
    inline_code,
)
from tests.docs.sandbox import RUNNABLE
from tests.harness import mail_fixtures
from tests.harness.fwdmilter_proc import toml
from tests.harness.redis import ACL_RULES

SYSTEMD: Final = REPO / "systemd"
#: Where install.md puts the source; relative paths in commands are in it.
SOURCE: Final = PurePosixPath("/usr/local/src/fwdmilter")
#: Units of the system a doc may name besides ours.
SYSTEM_UNITS: Final = frozenset({"postfix", "postfix.service", "postfix@-.service"})
SYSTEMCTL_VERBS: Final = frozenset(
    {
        "daemon-reload",
        "enable",
        "disable",
        "start",
        "stop",
        "restart",
        "reload",
        "status",
        "list-timers",
        "edit",
        "cat",
        "show",
        "is-active",
    }
)
#: Host paths a doc may name that are neither ours nor installed by install.md.
SYSTEM_PATHS: Final = (
    "/usr/bin/python3",
    "/etc/postfix/main.cf",
    "/etc/postfix/master.cf",
    "/var/spool/postfix",
    "/var/spool/mqueue",
    "/var/spool/mqueue-client",
    "/var/log/mail.log",
    "/dev/null",
)
#: SMTP replies the docs may quote that are not fwdmilter's own: Postfix's,
#: and the example downstream's.
OTHER_REPLIES: Final = frozenset(
    {
        ("451", "4.7.1"),  # Postfix: milter unavailable, milter_default_action = tempfail
        ("552", "5.3.4"),  # Postfix: message too big
        ("552", "5.2.2"),  # the docs' downstream: mailbox full
        ("550", "5.1.1"),  # docs/redis.md's downstream: user unknown
        ("553", "5.3.5"),  # Sendmail: mail loops back to me
        ("421", "4.5.0"),  # Sendmail: bare linefeed
    }
)


# -- what the repository says ------------------------------------------------------------


def _bash_array(path: Path, name: str) -> list[str]:
    text = path.read_text()
    m = re.search(rf"^{name}=\((.*?)\)", text, re.MULTILINE | re.DOTALL)
    assert m, f"{path}: no {name}=(...)"
    words: list[str] = []
    for line in m.group(1).split("\n"):
        words += line.split("#", 1)[0].split()
    return words


@functools.cache
def runtime_packages() -> frozenset[str]:
    return frozenset(_bash_array(REPO / "scripts" / "lib.sh", "RUNTIME_PACKAGES"))


@functools.cache
def suite_packages() -> frozenset[str]:
    return frozenset(_bash_array(REPO / "scripts" / "test", "TEST_PACKAGES"))


@functools.cache
def deb_packages() -> frozenset[str]:
    """What scripts/test installs to build the Debian package (tests/deb)."""
    return frozenset(_bash_array(REPO / "scripts" / "test", "DEB_PACKAGES"))


def built_deb() -> str:
    """Where docs/install.md's dpkg-buildpackage leaves the package."""
    return f"{SOURCE.parent}/fwdmilter_{setup_version()}_all.deb"


def setup_version() -> str:
    text = (REPO / "fwdmilter" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    assert found, "fwdmilter/__init__.py has no __version__"
    return found.group(1)


@functools.cache
def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def console_scripts() -> set[str]:
    lines = setup_cfg()["options.entry_points"]["console_scripts"].strip().split("\n")
    return {line.split("=")[0].strip() for line in lines}


def extras() -> set[str]:
    return set(setup_cfg()["options.extras_require"])


def units() -> set[str]:
    return {p.name for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer")}


@functools.cache
def install_paths() -> frozenset[str]:
    """The paths of the table at the top of docs/install.md."""
    found: set[str] = set()
    for line in (REPO / "docs" / "install.md").read_text().split("\n"):
        if not line.startswith("| `/"):
            continue
        last = ""
        for named in re.findall(r"`([^`]+)`", line.split("|")[1]):
            # "`/etc/systemd/system/x.service`, `.timer`"
            path = last.rsplit(".", 1)[0] + named if named.startswith(".") else named
            found.add(path.rstrip("/"))
            last = path
    assert found, "docs/install.md lost its table of installed paths"
    return frozenset(found)


def path_problem(path: str, cwd: PurePosixPath) -> str | None:
    """Why ``path``, named by a host command run in ``cwd``, is not a known one."""
    full = PurePosixPath(path) if path.startswith("/") else cwd / path
    full = PurePosixPath(str(full).rstrip("/"))
    if full == SOURCE or full.is_relative_to(SOURCE):
        inside = REPO / full.relative_to(SOURCE)
        return None if inside.exists() else f"{path}: no {inside.relative_to(REPO)} in the repo"
    allowed = set(install_paths()) | set(SYSTEM_PATHS)
    for unit in units():
        allowed |= {f"/etc/systemd/system/{unit}", f"/etc/systemd/system/{unit}.d"}
    for known in allowed:
        k = PurePosixPath(known)
        if full == k or full in k.parents or (full.is_relative_to(k) and known.endswith(".d")):
            return None
        if known in ("/opt/fwdmilter", "/var/lib/fwdmilter") and full.is_relative_to(k):
            return None
    return f"{path}: neither in the repo nor an install path of docs/install.md"


@functools.cache
def fwdmilter_options() -> frozenset[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fwdmilter.daemon", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return frozenset(re.findall(r"(--[a-z][a-z-]*)", done.stdout))


@functools.cache
def postfix_parameters() -> frozenset[str]:
    done = subprocess.run(["postconf", "-d"], capture_output=True, text=True, check=True)
    return frozenset(line.split("=")[0].strip() for line in done.stdout.splitlines())


def fwdctl_problem(args: list[str]) -> str | None:
    """Why fwdctl's own parser refuses ``args`` (the words after fwdctl), or None.

    Redirections (``> FILE``, ``< FILE``) are the shell's, not fwdctl's.
    """
    plain: list[str] = []
    target = False
    for word in args:
        if not target and word not in (">", ">>", "<", ">&"):
            plain.append(word)
        target = not target and word in (">", ">>", "<", ">&")
    args = plain
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code == 0:  # --help, --version
            return None
        return f"fwdctl {' '.join(args)}: {err.getvalue().strip().splitlines()[-1]}"
    return None


# -- the blocks ------------------------------------------------------------------------


def test_every_block_has_a_known_tag() -> None:
    problems = []
    for b in all_blocks():
        if b.tag not in TAGS:
            problems.append(f"{b.where}: tag {b.tag!r} is not one of {sorted(TAGS)}")
        for key, value in b.attrs.items():
            if key == "event" and value not in scenario.EVENTS:
                problems.append(f"{b.where}: no such event {value!r} in tests/docs/scenario.py")
            elif key == "check" and value not in scenario.CHECKS:
                problems.append(f"{b.where}: no such check {value!r} in tests/docs/scenario.py")
            elif key == "check" and b.tag not in DATA_TAGS:
                problems.append(f"{b.where}: check= is for blocks that are no commands")
            elif key not in ("event", "check"):
                problems.append(f"{b.where}: unknown attribute {key!r}")
    assert not problems, "\n".join(problems)


def test_every_event_and_check_is_used() -> None:
    used = {b.attrs[k] for b in all_blocks() for k in ("event", "check") if k in b.attrs}
    stale = (set(scenario.EVENTS) | set(scenario.CHECKS)) - used
    assert not stale, f"tests/docs/scenario.py has events or checks no doc uses: {stale}"


#: Programs a doc may name in a host block; each has a checker below.
def _all_commands() -> Iterator[tuple[Block, Command]]:
    for b in all_blocks():
        if b.tag in RUN_TAGS | HOST_TAGS:
            for c in commands(b):
                yield b, c


#: Words that start a command line, never a line of text or output.
_COMMAND_WORDS: Final = RUNNABLE | {
    "systemctl",
    "journalctl",
    "apt-get",
    "postfix",
    "postsuper",
    "runuser",
    "sudo",
    "swaks",
    "dig",
}


def test_no_command_hides_in_a_block_that_is_not_run_or_checked() -> None:
    programs = _COMMAND_WORDS
    problems = []
    for b in all_blocks():
        if b.tag not in DATA_TAGS or "check" in b.attrs:  # checked: what the sandbox made
            continue
        for n, line in enumerate(b.text.split("\n"), b.line + 1):
            words = line.strip().removeprefix("$ ").removeprefix("# ").split()
            if line.strip().startswith("$ ") or (words and words[0] in programs):
                problems.append(f"{b.path.relative_to(REPO)}:{n}: a command in a {b.tag!r} block")
    assert not problems, "\n".join(problems)


def test_runnable_commands_name_only_what_the_sandbox_runs() -> None:
    problems = []
    for b, c in _all_commands():
        if b.tag not in RUN_TAGS:
            continue
        for words in c.words:
            prog = PurePosixPath(words[0]).name
            if prog not in RUNNABLE:
                problems.append(f"{c.where}: {words[0]} does not run in the sandbox: tag sh-host?")
            if prog in ("postconf", "postqueue", "postcat") and (
                "-c" not in words or words[words.index("-c") + 1] != "/etc/postfix"
            ):
                problems.append(f"{c.where}: {prog} needs -c /etc/postfix (the sandbox maps it)")
            if prog == "fwdctl" and (why := fwdctl_problem(words[1:])):
                problems.append(f"{c.where}: {why}")
            if prog == "fwdmilter":
                unknown = {w for w in words if w.startswith("--")} - fwdmilter_options()
                if unknown:
                    problems.append(f"{c.where}: fwdmilter has no option {sorted(unknown)}")
    assert not problems, "\n".join(problems)


# -- host commands ---------------------------------------------------------------------


@dataclasses.dataclass
class Ctx:
    cwd: PurePosixPath
    where: str
    problems: list[str]

    def path(self, path: str) -> None:
        if (why := path_problem(path, self.cwd)) is not None:
            self.problems.append(f"{self.where}: {why}")

    def fail(self, text: str) -> None:
        self.problems.append(f"{self.where}: {text}")


def _operands(words: list[str], with_value: tuple[str, ...] = ()) -> list[str]:
    """The words that are not options (nor the values of ``with_value`` options)."""
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


def _redirects(words: list[str], ctx: Ctx) -> list[str]:
    """``words`` without redirections, whose targets are checked as paths."""
    kept: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in (">", ">>", "<"):
            ctx.path(words[i + 1])
            i += 2
        elif words[i] in ("<<", ">&"):
            i += 2
        else:
            kept.append(words[i])
            i += 1
    return kept


def _units(names: list[str], ctx: Ctx) -> None:
    ours = units() | {u.rsplit(".", 1)[0] for u in units() if u.endswith(".service")}
    for name in names:
        if name not in ours and name not in SYSTEM_UNITS:
            ctx.fail(f"no unit {name!r} in systemd/")


def _check_apt(words: list[str], ctx: Ctx) -> None:
    args = _operands(words[1:])
    if args[:1] == ["install"]:
        known = runtime_packages() | suite_packages() | deb_packages() | {built_deb()}
        unknown = set(args[1:]) - known
        if unknown:
            ctx.fail(f"packages scripts/ do not install: {sorted(unknown)}")
    elif args not in (["update"], ["remove", "fwdmilter"], ["purge", "fwdmilter"]):
        ctx.fail(f"apt-get {' '.join(args)}: only update, install, and remove or purge fwdmilter")


def _check_systemctl(words: list[str], ctx: Ctx) -> None:
    args = _operands(words[1:])
    if not args or args[0] not in SYSTEMCTL_VERBS:
        ctx.fail(f"systemctl {args[:1]}: not a known verb")
        return
    _units(args[1:], ctx)


def _check_journalctl(words: list[str], ctx: Ctx) -> None:
    _units([words[i + 1] for i, w in enumerate(words) if w == "-u"], ctx)


def _check_paths(first: int = 1, value_options: tuple[str, ...] = ()) -> Callable[..., None]:
    def check(words: list[str], ctx: Ctx) -> None:
        for word in _operands(words[first:], value_options):
            ctx.path(word)

    return check


def _check_install(words: list[str], ctx: Ctx) -> None:
    for word in _operands(words[1:], ("-m", "-o", "-g")):
        ctx.path(word)


def _check_ln(words: list[str], ctx: Ctx) -> None:
    args = _operands(words[1:])
    for src in args[:-1]:
        ctx.path(src)
        name = PurePosixPath(src).name
        if src.startswith("/opt/fwdmilter/bin/") and name not in console_scripts() | {"python"}:
            ctx.fail(f"{src}: setup.cfg installs no such command")
    ctx.path(args[-1])


def _check_pip(words: list[str], ctx: Ctx) -> None:
    for word in _operands(words[2:]):
        m = re.fullmatch(r"(.*?)(?:\[(\w+)\])?", word)
        assert m is not None
        ctx.path(m.group(1))
        if m.group(2) and m.group(2) not in extras():
            ctx.fail(f"{word}: setup.cfg has no extra {m.group(2)!r}")


def _check_python(words: list[str], ctx: Ctx) -> None:
    if words[1:3] == ["-m", "venv"]:
        ctx.path(words[3])
    elif words[1] != "-c":
        ctx.fail(f"{' '.join(words)}: only -c and -m venv")


def _check_sed(words: list[str], ctx: Ctx) -> None:
    for word in _operands(words[1:])[1:]:
        ctx.path(word)


def _check_postconf(words: list[str], ctx: Ctx) -> None:
    args = words[1:]
    if "-e" in args:
        main = scenario.main_cf()
        for setting in _operands(args):
            key, _, value = (s.strip() for s in setting.partition("="))
            if main.get(key) != value:
                ctx.fail(
                    f"postconf -e {setting!r}: docs/postfix.md's main.cf says {main.get(key)!r}"
                )
    elif "-F" not in args:
        for name in _operands(args, ("-c",)):
            if name not in postfix_parameters():
                ctx.fail(f"postconf: Postfix has no parameter {name!r}")


def _check_postfix(words: list[str], ctx: Ctx) -> None:
    if words[1:] not in (["check"], ["reload"]):
        ctx.fail(f"postfix {' '.join(words[1:])}: only check and reload")


def _check_runuser(words: list[str], ctx: Ctx) -> None:
    if words[1:4] != ["-u", "fwdmilter", "--"]:
        ctx.fail("runuser: as -u fwdmilter -- COMMAND")
        return
    check_host_command(words[4:], ctx)


_INSTALLED_FWDMILTER: Final = ("/usr/local/bin/fwdmilter", "/usr/bin/fwdmilter")


def _check_fwdmilter(words: list[str], ctx: Ctx) -> None:
    unknown = {w for w in words if w.startswith("--")} - fwdmilter_options()
    if unknown:
        ctx.fail(f"fwdmilter has no option {sorted(unknown)}")
    for word in _operands(words[1:]):
        ctx.path(word)
    # The checkout's symlink and the package's command.
    if words[0].startswith("/") and words[0] not in _INSTALLED_FWDMILTER:
        ctx.path(words[0])


def _check_fwdctl(words: list[str], ctx: Ctx) -> None:
    if (why := fwdctl_problem(words[1:])) is not None:
        ctx.fail(why)


def _check_script(words: list[str], ctx: Ctx) -> None:
    path = REPO / words[0]
    if not (path.is_file() and path.stat().st_mode & 0o111):
        ctx.fail(f"{words[0]}: no executable file in the repo")


def _ok(words: list[str], ctx: Ctx) -> None:
    return None


def _check_mailq(words: list[str], ctx: Ctx) -> None:
    # The test harness's Sendmail lists its quarantine with exactly this.
    if words[1:] != ["-qQ"]:
        ctx.fail(f"mailq {' '.join(words[1:])}: the docs list quarantined mail with mailq -qQ")


#: Every program a ``sh-host`` block may run, and how it is checked.
HOST_CHECKS: Final[dict[str, Callable[[list[str], Ctx], None]]] = {
    "apt-get": _check_apt,
    "dpkg-buildpackage": lambda w, c: (
        None if w[1:] == ["-b", "-us", "-uc"] else c.fail("dpkg-buildpackage: as -b -us -uc")
    ),
    "mailq": _check_mailq,
    "systemctl": _check_systemctl,
    "journalctl": _check_journalctl,
    "systemd-analyze": lambda w, c: _units(_operands(w[2:]), c),
    "systemd-sysusers": _check_paths(),
    "systemd-tmpfiles": _check_paths(),
    "install": _check_install,
    "ln": _check_ln,
    "pip": _check_pip,
    "python": _check_python,
    "python3": _check_python,
    "sed": _check_sed,
    "test": _check_paths(),
    "chown": _check_paths(2),
    "chmod": _check_paths(2),
    "mkdir": _check_paths(),
    "rm": _check_paths(),
    "ls": _check_paths(),
    "cat": _check_paths(),
    "printf": _check_paths(2),
    "editor": _check_paths(),
    "id": lambda w, c: None if w[1:] == ["fwdmilter"] else c.fail("id: of fwdmilter"),
    "runuser": _check_runuser,
    "postconf": _check_postconf,
    "postfix": _check_postfix,
    "fwdmilter": _check_fwdmilter,
    "fwdctl": _check_fwdctl,
    "dig": _ok,
    "hostname": _ok,
    "umask": _ok,
    "grep": _ok,  # reads what the command before it prints
}


def check_host_command(words: list[str], ctx: Ctx) -> None:
    words = _redirects(words, ctx)
    prog = words[0]
    name = PurePosixPath(prog).name
    if prog.startswith("./"):
        _check_script(words, ctx)
        return
    if prog == "cd":
        ctx.path(words[1])
        ctx.cwd = PurePosixPath(words[1])
        return
    if prog.startswith("/") and name not in ("python3", "fwdmilter", "fwdctl"):
        ctx.path(prog)
    check = HOST_CHECKS.get(name)
    if check is None:
        ctx.fail(f"{prog}: not a command the docs tests know; add it to HOST_CHECKS")
        return
    check(words, ctx)


def test_host_commands() -> None:
    problems: list[str] = []
    for b in all_blocks():
        if b.tag not in HOST_TAGS:
            continue
        ctx = Ctx(SOURCE, "", problems)
        for c in commands(b):
            ctx.where = f"{c.where}: {c.text}"
            for words in c.words:
                check_host_command(words, ctx)
    assert not problems, "\n".join(problems)


def test_install_md_installs_what_scripts_run_installs() -> None:
    """From a checkout: what scripts/run installs; the package: what tests/deb builds with."""
    path = REPO / "docs" / "install.md"
    lines = path.read_text().split("\n")
    assert "## From a checkout" in lines, "docs/install.md lost its section From a checkout"
    checkout_from = lines.index("## From a checkout") + 1
    package: set[str] = set()
    checkout: set[str] = set()
    for b in blocks(path):
        for c in commands(b) if b.tag in HOST_TAGS else ():
            for words in c.words:
                if words[:2] == ["apt-get", "install"]:
                    (checkout if b.line > checkout_from else package).update(_operands(words[2:]))
    assert checkout == runtime_packages()
    assert package == (deb_packages() - _PACKAGE_DEPENDS) | {built_deb()}


#: scripts/test installs these before the package too (the tests' own tools,
#: and what apt brings as the package's dependencies); the rest of its list
#: is what building the package needs, and install.md must install it all.
_PACKAGE_DEPENDS: Final = frozenset({"git", "lintian", "python3-async-timeout"})


def test_units_named_by_install_md_are_all_installed() -> None:
    text = (REPO / "docs" / "install.md").read_text()
    for unit in units():
        assert f"systemd/{unit}" in text, f"docs/install.md does not install {unit}"


# -- Postfix ---------------------------------------------------------------------------


def _harness_border_settings(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The main.cf settings the harness gives every BORDER (its Postfix
    replaced by a stub that only keeps them)."""
    captured: dict[str, Any] = {}

    class Stub:
        def __init__(self, *args: object, **kw: Any) -> None:
            captured.update(kw["main"])

        def write_map(self, *args: object) -> str:
            return "hash:/dev/null"

        def update_main(self, *args: object) -> None:
            return None

    class Sink:
        port = staticmethod(lambda *args: 1)

    class World:
        borders: typing.ClassVar[list[object]] = []
        sink = inner = Sink()

    monkeypatch.setattr(mail_fixtures, "PostfixInstance", Stub)
    world: Any = World()
    factory = mail_fixtures.BorderFactory(world, world, Path("/nonexistent"))
    factory("unix:/milter.sock", start=False, route_bounces=False)
    return {k: str(v) for k, v in captured.items()}


def test_main_cf_of_the_docs_is_the_harness_borders(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = scenario.main_cf()
    harness = _harness_border_settings(monkeypatch)
    for key in ("internal_mail_filter_classes", "milter_default_action"):
        assert doc[key] == harness[key], key
    assert doc["smtpd_milters"] == doc["non_smtpd_milters"]
    assert harness["smtpd_milters"] == harness["non_smtpd_milters"]
    doc_domains = {d.strip() for d in doc["relay_domains"].split(",")}
    harness_domains = {d.strip() for d in harness["relay_domains"].split(",")}
    mapped = {d.replace(scenario.DOC_DOMAIN, scenario.DOMAIN) for d in doc_domains}
    assert mapped <= harness_domains
    unknown = set(doc) - postfix_parameters()
    assert not unknown, f"Postfix has no parameters {unknown}"


def test_every_main_cf_setting_has_its_postconf_e() -> None:
    made: set[str] = set()
    for _, c in _all_commands():
        for words in c.words:
            if words[:2] == ["postconf", "-e"]:
                made |= {s.partition("=")[0].strip() for s in words[2:]}
    assert set(scenario.main_cf()) == made


def test_bounce_size_limit_leaves_room_for_the_report() -> None:
    main = scenario.main_cf()
    assert int(main["message_size_limit"]) - int(main["bounce_size_limit"]) == 1048576


def test_master_cf_lines() -> None:
    daemons = subprocess.run(
        ["postconf", "-dh", "daemon_directory"], capture_output=True, text=True, check=True
    ).stdout.strip()
    for b in all_blocks():
        if b.tag != "master.cf":
            continue
        for line in b.text.split("\n"):
            if not line.strip() or line.startswith(("#", " ")):
                continue
            fields = line.split()
            assert len(fields) >= 8, f"{b.where}: {line!r}"
            assert fields[1] in ("inet", "unix", "unix-dgram", "fifo", "pass"), line
            assert all(f in "-yn" for f in fields[2:5]), line
            assert (Path(daemons) / fields[7]).exists(), f"{b.where}: no Postfix daemon {fields[7]}"


# -- fwdmilter's own names ---------------------------------------------------------------


def test_toml_blocks_are_configurations_that_load() -> None:
    for b in all_blocks():
        if b.tag != "toml":
            continue
        data = tomllib.loads(b.text)
        data.setdefault("srs", {}).setdefault("domain", "fwd.example.net")
        config.loads(toml(data))


def test_the_example_configuration_loads() -> None:
    text = (REPO / "docs" / "fwdmilter.example.toml").read_text()
    config.loads(text.replace("@HOSTNAME@", "mx1.fwd.example.net"))


def test_acl_blocks_are_the_acl_the_store_tests_use() -> None:
    found = [b for b in all_blocks() if b.tag == "acl"]
    assert found
    for b in found:
        assert b.text.strip() == f"user fwdmilter on >PASSWORD {ACL_RULES}", b.where


_SECTIONS: Final = tuple(
    f.name for f in dataclasses.fields(config.Config) if f.name not in config.NOT_SECTIONS
)
_KEY: Final = re.compile(rf"(?<![\w./-])(?:{'|'.join(_SECTIONS)})\.[a-z_]+(?![\w.(])")


def _config_keys() -> set[str]:
    hints = typing.get_type_hints(config.Config)
    return {
        f"{section}.{f.name}" for section in _SECTIONS for f in dataclasses.fields(hints[section])
    }


def test_config_keys_named_in_the_docs_exist() -> None:
    keys = _config_keys()
    problems = []
    for path in DOCS:
        for n, span in inline_code(path):
            for key in _KEY.findall(span):
                if key not in keys and not key.endswith(("_total", "_seconds")):
                    problems.append(f"{path.relative_to(REPO)}:{n}: no key {key}")
    assert not problems, "\n".join(problems)


def test_fwdctl_and_fwdmilter_options_named_inline_exist() -> None:
    parser = cli.build_parser()
    problems = []
    for path in DOCS:
        for n, span in inline_code(path):
            words = span.split()
            if not words or words[0] not in ("fwdctl", "fwdmilter"):
                continue
            options = {w.split("=")[0] for w in words if w.startswith("--")}
            known: set[str]
            if words[0] == "fwdmilter":
                known = set(fwdmilter_options())
            else:
                known = set(parser._option_string_actions)
                sub: argparse.ArgumentParser | None = parser
                for word in words[1:]:
                    if sub is None or word.startswith("-"):
                        break
                    subs = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                    sub = subs[0].choices.get(word) if subs else None
                    if sub is not None:
                        known |= set(sub._option_string_actions)
            if options - known:
                problems.append(f"{path.relative_to(REPO)}:{n}: {span}: no {options - known}")
    assert not problems, "\n".join(problems)


def _metric_names() -> set[str]:
    source = (REPO / "fwdmilter" / "prometheus.py").read_text()
    names: set[str] = set()
    for kind, name in re.findall(r"(Counter|Histogram|GaugeMetricFamily)\(\s*\"(\w+)\"", source):
        if kind == "Counter":
            names |= {f"{name}_total"}
        elif kind == "Histogram":
            names |= {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    assert names
    return names


def test_metric_names_in_the_docs_exist() -> None:
    known = _metric_names()
    problems = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().split("\n"), 1):
            for name in re.findall(r"\bfwdmilter_[a-z_]+\b", line):
                if name not in known:
                    problems.append(f"{path.relative_to(REPO)}:{n}: no metric {name}")
    assert not problems, "\n".join(problems)


def test_smtp_replies_quoted_in_the_docs_exist() -> None:
    ours = {(str(r.code), r.status) for r in vars(replies).values() if isinstance(r, Reply)}
    problems = []
    for path in DOCS:
        if path.name == "benchmarks.md":
            continue
        for n, line in enumerate(path.read_text().split("\n"), 1):
            for code, status in re.findall(r"\b([45]\d\d) ([45]\.\d{1,3}\.\d{1,3})\b", line):
                if (code, status) not in ours | OTHER_REPLIES:
                    problems.append(f"{path.relative_to(REPO)}:{n}: no reply {code} {status}")
    assert not problems, "\n".join(problems)


# -- links and generated parts ---------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*$", path.read_text(), re.MULTILINE)
    return {_slug(h) for h in heads}


def test_links_resolve() -> None:
    problems = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        for n_target in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = n_target.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            rel = str(dest.relative_to(REPO)) if dest.is_relative_to(REPO) else str(dest)
            if not dest.exists():
                problems.append(f"{path.relative_to(REPO)}: {rel}: no such file")
                continue
            if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{path.relative_to(REPO)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_readme_links_every_doc() -> None:
    readme = (REPO / "README.md").read_text()
    for path in (*DOCS[1:], REPO / "benchmarks" / "README.md", REPO / "docs" / "sendmail.md"):
        rel = str(path.relative_to(REPO))
        assert f"]({rel})" in readme, f"README.md does not link {rel}"


def _gen_docs() -> Any:
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_states_svg_was_drawn_from_states_dot() -> None:
    gen = _gen_docs()
    assert gen.svg_source_hash() == gen.source_hash(), (
        "docs/states.svg was not drawn from the current docs/states.dot:"
        " run .venv/bin/python scripts/gen_docs.py"
    )


def test_generated_parts_are_current() -> None:
    """Tables from config.py and replies.py, and the picture drawn again."""
    gen = _gen_docs()
    stale = [
        str(path.relative_to(REPO))
        for path, want in gen.outputs().items()
        if path.read_text(encoding="utf-8") != want
    ]
    assert not stale, f"stale: {stale}; run .venv/bin/python scripts/gen_docs.py"


def test_the_docs_parse() -> None:
    for path in DOCS:
        for b in blocks(path):
            if b.tag in RUN_TAGS | HOST_TAGS:
                for c in commands(b):
                    shlex.split(c.text, comments=True)
