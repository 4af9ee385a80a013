"""The systemd units in systemd/, checked offline with systemd's own tools.

``systemd-analyze verify`` must accept every unit without a word (it only
warns about unknown keys and bad values, so any output fails the test);
``systemd-analyze security --offline=true`` must rate the milter's sandbox
at an exposure of 2.0 or lower. The units name the installed paths
/usr/local/bin/fwdmilter and /usr/local/bin/fwdctl (docs/install.md); verify
wants those to exist, so it checks copies in which exactly those two paths
name this virtual environment's console scripts, and nothing else changed.

systemd need not run: these tools read the files. They come with Debian's
``systemd`` package, which scripts/test installs; without them the tests
fail and say so.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

from fwdmilter import config

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = (
    "fwdmilter.service",
    "fwdctl-expire.service",
    "fwdctl-expire.timer",
    "fwdmilter-web.service",
    "fwdctl-release.service",
    "fwdctl-release.timer",
)
#: Where docs/install.md puts the console scripts, and their names in a venv.
INSTALLED_SCRIPTS = {
    "/usr/local/bin/fwdmilter-web": "fwdmilter-web",
    "/usr/local/bin/fwdmilter": "fwdmilter",
    "/usr/local/bin/fwdctl": "fwdctl",
}
#: The exposure each service may reach (the milter's bound is the project's
#: requirement; the expire job runs as root, and 2.4 is what that allows).
MAX_EXPOSURE = {
    "fwdmilter.service": 2.0,
    "fwdctl-expire.service": 2.5,
    "fwdmilter-web.service": 2.0,
    "fwdctl-release.service": 2.5,
}

#: Sandboxing settings each service must either set or explain with a
#: "# not set: NAME" comment.
HARDENING = (
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "DevicePolicy",
    "PrivateUsers",
    "PrivateNetwork",
    "PrivateIPC",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "ProcSubset",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "RestrictNamespaces",
    "RemoveIPC",
    "RestrictAddressFamilies",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "UMask",
    "IPAddressDeny",
    "RootDirectory",
    "User",
)


def systemd_tool(name: str) -> str:
    """The path of one of systemd's tools; the test fails if it is missing."""
    found = shutil.which(name) or next(
        (p for d in ("/usr/bin", "/bin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            f"{name} is missing: install Debian's systemd package "
            "(apt-get install systemd; scripts/test does it). It only reads unit files "
            "here: systemd need not be running.",
            pytrace=False,
        )
    return found


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="", LC_ALL="C.UTF-8")
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=120,
        check=False,
    )


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it is given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_text(name: str) -> str:
    return (SYSTEMD_DIR / name).read_text(encoding="utf-8")


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(unit_text(name))["Service"]


def seconds(value: str) -> float:
    """A systemd time span such as "60s", "1min 30s" or "90" in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


# -- systemd-analyze verify -------------------------------------------------


def installed_copies(dest: Path) -> Path:
    """Copies of the units whose /usr/local/bin paths name this venv's scripts."""
    venv_bin = Path(sys.executable).parent
    for name in UNITS:
        text = unit_text(name)
        for installed, script in INSTALLED_SCRIPTS.items():
            real = venv_bin / script
            if not os.access(real, os.X_OK):
                pytest.fail(f"{real} is missing: run pip install -e . in this venv", pytrace=False)
            assert not re.search(r"\s", str(real)), f"{real}: a path with blanks"
            text = text.replace(installed, str(real))
        assert "/usr/local/bin" not in text, f"{name}: names another installed path"
        (dest / name).write_text(text, encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_copies(tmp_path_factory.mktemp("units"))


def verify(paths: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    return run([systemd_tool("systemd-analyze"), "verify", "--man=no", *map(str, paths)])


def assert_verified(result: subprocess.CompletedProcess[str]) -> None:
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not said, f"systemd-analyze verify:\n{said}"


@pytest.mark.parametrize("name", UNITS)
def test_verify_accepts_the_unit_without_a_word(copies: Path, name: str) -> None:
    assert_verified(verify([copies / name]))


def test_verify_accepts_all_units_together(copies: Path) -> None:
    assert_verified(verify([copies / name for name in UNITS]))


def test_the_copies_differ_only_in_the_installed_paths(copies: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    for name in UNITS:
        restored = (copies / name).read_text(encoding="utf-8")
        for installed, script in INSTALLED_SCRIPTS.items():
            restored = restored.replace(f"{venv_bin}/{script}", installed)
        assert restored == unit_text(name)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ProtectSystem=strict", "ProtectSystem=strcit"),  # a bad value: only a warning
        ("PrivateTmp=yes", "PrivateTmpp=yes"),  # an unknown key: only a warning
        ("Type=notify", "Type=notify\nExecStart=/nonexistent/fwdmilter"),  # a missing binary
    ],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, old: str, new: str) -> None:
    """The check above is strict enough to fail on the mistakes verify only warns about."""
    installed_copies(tmp_path)
    path = tmp_path / "fwdmilter.service"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(AssertionError, match="systemd-analyze verify"):
        assert_verified(verify([path]))


# -- systemd-analyze security ------------------------------------------------


def exposure(path: Path) -> float:
    result = run([systemd_tool("systemd-analyze"), "security", "--offline=true", str(path)])
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert result.returncode == 0 and match, (
        f"systemd-analyze security failed:\n{result.stdout}{result.stderr}"
    )
    return float(match.group(1))


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_exposure_level(name: str) -> None:
    level = exposure(SYSTEMD_DIR / name)
    assert level <= MAX_EXPOSURE[name], (
        f"{name}: exposure {level} is above {MAX_EXPOSURE[name]}; see "
        f"systemd-analyze security --offline=true systemd/{name}"
    )


def test_a_weaker_sandbox_scores_worse(tmp_path: Path) -> None:
    """The score really comes from the file: dropping settings raises it."""
    text = unit_text("fwdmilter.service")
    for line in ("PrivateUsers=yes", "CapabilityBoundingSet=", "SystemCallArchitectures=native"):
        assert f"\n{line}\n" in text
        text = text.replace(f"\n{line}\n", "\n", 1)
    path = tmp_path / "fwdmilter.service"
    path.write_text(text, encoding="utf-8")
    assert exposure(path) > exposure(SYSTEMD_DIR / "fwdmilter.service")


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_every_hardening_setting_is_set_or_explained(name: str) -> None:
    text = unit_text(name)
    settings = service(name)
    missing = [
        key
        for key in HARDENING
        if key not in settings and not re.search(rf"^# not set: {key}\b", text, re.MULTILINE)
    ]
    assert not missing, f"{name}: neither set nor explained: {', '.join(missing)}"


# -- what the units promise the daemon and the admin -------------------------


def test_milter_service_matches_the_daemon() -> None:
    unit = parse_unit(unit_text("fwdmilter.service"))
    svc = unit["Service"]
    assert svc["Type"] == ["notify"]
    assert svc["ExecStart"] == [f"/usr/local/bin/fwdmilter --config {config.DEFAULT_CONFIG_PATH}"]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["User"] == svc["Group"] == ["fwdmilter"]
    assert "SupplementaryGroups" not in svc
    # SIGTERM lets transactions run for milter.shutdown_timeout; systemd must wait longer.
    assert seconds(svc["TimeoutStopSec"][0]) > config.MilterSettings().shutdown_timeout
    for section in ("Wants", "After"):
        assert "network-online.target" in " ".join(unit["Unit"][section]).split()


def test_milter_directories_hold_the_default_paths() -> None:
    svc = service("fwdmilter.service")
    socket_dir = PurePosixPath(config.MilterSettings().socket.split(":", 1)[1]).parent
    assert socket_dir == PurePosixPath("/run") / svc["RuntimeDirectory"][0]
    assert svc["RuntimeDirectoryMode"] == ["0750"]  # group fwdmilter (the MTA) may enter
    store_dir = PurePosixPath(urlsplit(config.DEFAULT_STORE_URL).path).parent
    assert store_dir == PurePosixPath("/var/lib") / svc["StateDirectory"][0]
    etc = PurePosixPath("/etc") / svc["ConfigurationDirectory"][0]
    assert PurePosixPath(config.DEFAULT_CONFIG_PATH).parent == etc
    assert PurePosixPath(config.SRSSettings().secrets_file).parent == etc
    assert svc["UMask"] == ["0027"]


def test_milter_may_write_the_postfix_socket_folder() -> None:
    tmpfiles = (SYSTEMD_DIR / "fwdmilter-postfix.tmpfiles").read_text(encoding="utf-8")
    lines = [line.split() for line in tmpfiles.splitlines() if line and not line.startswith("#")]
    assert lines == [["d", "/var/spool/postfix/fwdmilter", "2750", "fwdmilter", "postfix", "-"]]
    assert service("fwdmilter.service")["ReadWritePaths"] == ["-/var/spool/postfix/fwdmilter"]


def test_expire_service_runs_fwdctl_held_expire() -> None:
    svc = service("fwdctl-expire.service")
    assert svc["Type"] == ["oneshot"]
    assert svc["ExecStart"] == [
        f"/usr/local/bin/fwdctl --config {config.DEFAULT_CONFIG_PATH} held expire",
        f"/usr/local/bin/fwdctl --config {config.DEFAULT_CONFIG_PATH} held check",
    ]
    # Root, for postsuper; and no StateDirectory=, which would chown the
    # milter's /var/lib/fwdmilter to root.
    assert "User" not in svc and "StateDirectory" not in svc
    assert svc["ReadWritePaths"] == ["-/var/lib/fwdmilter -/var/spool/postfix"]


def test_web_service_runs_the_web_app_without_the_srs_secrets() -> None:
    unit = parse_unit(unit_text("fwdmilter-web.service"))
    svc = unit["Service"]
    assert svc["ExecStart"] == [
        f"/usr/local/bin/fwdmilter-web --config {config.DEFAULT_CONFIG_PATH}"
    ]
    assert svc["User"] == svc["Group"] == ["fwdmilter"]
    assert svc["InaccessiblePaths"] == ["-" + config.SRSSettings().secrets_file]
    store_dir = PurePosixPath(urlsplit(config.DEFAULT_STORE_URL).path).parent
    assert svc["ReadWritePaths"] == [f"-{store_dir}"]
    assert "StateDirectory" not in svc  # the milter's unit owns /var/lib/fwdmilter
    for section in ("Wants", "After"):
        assert "network-online.target" in " ".join(unit["Unit"][section]).split()


def test_release_service_runs_fwdctl_held_release() -> None:
    svc = service("fwdctl-release.service")
    assert svc["Type"] == ["oneshot"]
    assert svc["ExecStart"] == [
        f"/usr/local/bin/fwdctl --config {config.DEFAULT_CONFIG_PATH} held release"
    ]
    assert "User" not in svc and "StateDirectory" not in svc
    # Shorter than the timer's period: runs never pile up.
    assert seconds(svc["TimeoutStartSec"][0]) < 60


def test_release_timer_runs_every_minute_on_time() -> None:
    unit = parse_unit(unit_text("fwdctl-release.timer"))
    timer = unit["Timer"]
    assert timer["OnCalendar"] == ["minutely"]
    assert seconds(timer["AccuracySec"][0]) <= 1
    assert unit["Install"]["WantedBy"] == ["timers.target"]


def test_timer_runs_daily_and_catches_up() -> None:
    unit = parse_unit(unit_text("fwdctl-expire.timer"))
    timer = unit["Timer"]
    assert timer["OnCalendar"] == ["daily"]
    assert timer["Persistent"] == ["true"]
    assert seconds(timer["RandomizedDelaySec"][0]) > 0
    assert unit["Install"]["WantedBy"] == ["timers.target"]


# -- sysusers.d and tmpfiles.d, applied to a scratch root --------------------


def passwd(root: Path) -> dict[str, list[str]]:
    lines = (root / "etc/passwd").read_text(encoding="utf-8").splitlines()
    return {line.split(":")[0]: line.split(":") for line in lines}


def group(root: Path) -> dict[str, list[str]]:
    lines = (root / "etc/group").read_text(encoding="utf-8").splitlines()
    return {line.split(":")[0]: line.split(":") for line in lines}


def sysusers(root: Path, *names: str) -> None:
    files = [str(SYSTEMD_DIR / name) for name in names]
    result = run([systemd_tool("systemd-sysusers"), f"--root={root}", *files])
    assert result.returncode == 0, result.stderr


def scratch_root(tmp_path: Path, with_postfix: bool) -> Path:
    (tmp_path / "etc").mkdir()
    users = ["root:x:0:0:root:/root:/bin/bash"]
    groups = ["root:x:0:"]
    if with_postfix:  # as Debian's postfix package makes them
        users.append("postfix:x:109:112::/var/spool/postfix:/usr/sbin/nologin")
        groups += ["postfix:x:112:", "postdrop:x:113:"]
    (tmp_path / "etc/passwd").write_text("\n".join(users) + "\n", encoding="utf-8")
    (tmp_path / "etc/group").write_text("\n".join(groups) + "\n", encoding="utf-8")
    return tmp_path


def test_sysusers_makes_the_system_user_and_group(tmp_path: Path) -> None:
    root = scratch_root(tmp_path, with_postfix=False)
    sysusers(root, "fwdmilter.sysusers")
    user = passwd(root)["fwdmilter"]
    assert int(user[2]) < 1000, "a system user"
    assert user[3] == group(root)["fwdmilter"][2]
    assert user[5:] == ["/var/lib/fwdmilter", "/usr/sbin/nologin"]
    assert group(root)["fwdmilter"][3] == "", "no members"
    assert "postfix" not in passwd(root) and "postfix" not in group(root)


def test_sysusers_leaves_postfix_alone(tmp_path: Path) -> None:
    root = scratch_root(tmp_path, with_postfix=True)
    before = (passwd(root)["postfix"], group(root)["postfix"])
    sysusers(root, "fwdmilter.sysusers")
    assert (passwd(root)["postfix"], group(root)["postfix"]) == before


def postfix_socket_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A scratch root with Postfix's user, fwdmilter's, and the socket folder tmpfiles makes."""
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root gives the folder to fwdmilter: needs root")
    root = scratch_root(tmp_path, with_postfix=True)
    sysusers(root, "fwdmilter.sysusers")
    (root / "var/spool/postfix").mkdir(parents=True)
    conf = str(SYSTEMD_DIR / "fwdmilter-postfix.tmpfiles")
    result = run([systemd_tool("systemd-tmpfiles"), "--create", f"--root={root}", conf])
    assert result.returncode == 0, result.stderr
    return root, root / "var/spool/postfix/fwdmilter"


def test_tmpfiles_makes_the_postfix_socket_folder(tmp_path: Path) -> None:
    root, folder = postfix_socket_folder(tmp_path)
    st = folder.stat()
    assert oct(st.st_mode & 0o7777) == "0o2750"
    assert str(st.st_uid) == passwd(root)["fwdmilter"][2]
    assert str(st.st_gid) == group(root)["postfix"][2]


def as_user(uid: int, gid: int, action: Callable[[], None]) -> int:
    """Run ``action`` in a child process with only this uid and gid; 0 if it worked."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            action()
            code = 0
        except OSError:
            code = 2
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def open_tmp_path() -> Iterator[Path]:
    """A scratch folder other users may walk into (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="fwdmilter-units-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_only_postfix_reaches_a_socket_in_that_folder(open_tmp_path: Path) -> None:
    """What milter.socket_mode 0660 gives in the folder: Postfix in, anyone else out.

    Postfix's daemons keep only their own group (they call setgroups() with
    it), so the socket must have group postfix: the folder's set-group-ID bit
    gives it that.
    """
    root, folder = postfix_socket_folder(open_tmp_path)
    fwd_uid, fwd_gid = (int(x) for x in passwd(root)["fwdmilter"][2:4])
    pf_uid, pf_gid = (int(x) for x in passwd(root)["postfix"][2:4])
    path = str(folder / "milter.sock")
    listener = socket.socket(socket.AF_UNIX)
    try:

        def bind() -> None:
            os.umask(0o027)  # the unit's UMask=
            listener.bind(path)
            Path(path).chmod(0o660)  # milter.socket_mode

        assert as_user(fwd_uid, fwd_gid, bind) == 0
        st = Path(path).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (fwd_uid, pf_gid, 0o660)
        listener.listen()

        def connect() -> None:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)

        assert as_user(pf_uid, pf_gid, connect) == 0, "Postfix's user could not connect"
        assert as_user(fwd_uid + 7, fwd_gid + 7, connect) == 2, "another user connected"
    finally:
        listener.close()


def test_install_guide_installs_every_file_and_no_other() -> None:
    guide = (SYSTEMD_DIR.parent / "docs/install.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\bsystemd/([\w.-]+\.(?:service|timer|sysusers|tmpfiles))\b", guide))
    assert named == {path.name for path in SYSTEMD_DIR.iterdir()}
    for installed in INSTALLED_SCRIPTS:
        assert installed in guide
