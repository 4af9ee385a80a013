"""docs/sendmail.md's .mc lines build, and say what the tested Sendmail runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.harness.sendmail import _MAILER_FLAGS, CF_DIR

DOC = Path(__file__).resolve().parents[2] / "docs" / "sendmail.md"


def _m4_block() -> str:
    blocks = re.findall(r"^```m4\n(.*?)^```$", DOC.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "docs/sendmail.md has one m4 block"
    return str(blocks[0])


def test_the_mc_lines_build_into_a_cf_with_the_milter_the_loop_back_daemon_and_mailer(
    tmp_path: Path,
) -> None:
    mc = tmp_path / "forwarder.mc"
    mc.write_text(
        f"divert(-1)\ninclude(`{CF_DIR}/m4/cf.m4')\ndivert(0)dnl\nOSTYPE(`linux')dnl\n"
        + _m4_block()
    )
    done = subprocess.run(["m4", str(mc)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    cf = done.stdout
    assert "Xfwdmilter, S=local:/run/fwdmilter/milter.sock, F=T, T=C:10s;S:10s;R:1m;E:5m" in cf
    assert "O InputMailFilters=fwdmilter" in cf
    assert "O DaemonPortOptions=Port=10026, Addr=127.0.0.1, Name=MTA-loop" in cf
    assert re.search(r"^Kmailertable ", cf, re.MULTILINE)
    (mailer,) = re.findall(r"^Mfwdloop,.*(?:\n\t.*)*", cf, re.MULTILINE)
    assert "A=TCP $h 10026" in mailer
    # The same flags as the loop-back mailer of the Sendmail the tests run.
    assert re.search(r"F=(\S+),", mailer).group(1) == _MAILER_FLAGS + "k"  # type: ignore[union-attr]
