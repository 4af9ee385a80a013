"""Sendmail's queue files: parsing control files, and the held-queue adapter.

The captured files in tests/data/sendmail were written by the test Sendmail
(see their README); the hand-made ones below cover what a capture cannot
show on demand (long macro names, conditional headers, a quoted 0377).
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
from pathlib import Path

import pytest

from fwdmilter import dsn
from fwdmilter.config import MTASettings
from fwdmilter.errors import MTAError
from fwdmilter.mta import open_mta
from fwdmilter.mta.sendmail import Sendmail, parse_control_file

DATA = Path(__file__).parents[1] / "data" / "sendmail"
CAPTURED = {
    "sendmail-bounce": "6ANFv0gm007232",
    "postfix-bounce": "6ANFv1HQ007273",
    "null-sender-8bit": "6ANFv4CC007302",
}


def control(name: str) -> bytes:
    return (DATA / f"{name}.hf").read_bytes()


def queue_with(folder: Path, *names: str, kind: str = "hf") -> Path:
    """A queue folder holding the captured messages ``names`` under their ids."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in names:
        qid = CAPTURED[name]
        shutil.copyfile(DATA / f"{name}.hf", folder / f"{kind}{qid}")
        shutil.copyfile(DATA / f"{name}.df", folder / f"df{qid}")
    return folder


# -- control files ------------------------------------------------------------------


def test_a_quarantined_sendmail_bounce() -> None:
    qid = CAPTURED["sendmail-bounce"]
    cf = parse_control_file(qid, control("sendmail-bounce"))
    assert cf.version == 8
    assert cf.arrival == 1795449420
    assert cf.sender == ""
    assert cf.recipients == ("SRS0=NG+0=JM=softfail.example=st7100x0020@fwd.example",)
    assert cf.quarantine.startswith("fwdmilter: bounce held, sender not verified: 5.1.1 550")
    assert cf.macros == {
        "_": "sendmail.fwd.example [127.0.0.1]",
        "r": "ESMTP",
        "s": "sendmail.fwd.example",
        "{daemon_flags}": "",
    }
    assert cf.headers[0].flags == "P"
    block = cf.header_block()
    assert block.startswith(b"Authentication-Results: sendmail.fwd.example; none")
    assert b"Return-Path" not in block  # ?P?: for local mailers only
    assert b'\tboundary="6ANFv0L7007231.1795449420/sendmail.fwd.example"\n' in block
    assert block.endswith(b"Auto-Submitted: auto-generated (failure)\n")


def test_return_path_is_expanded_for_a_mailer_that_wants_it() -> None:
    cf = parse_control_file("x" * 14, control("sendmail-bounce"))
    assert cf.header_block(frozenset("P")).startswith(b"Return-Path: <>\nAuthentication-Results")
    cf = parse_control_file("x" * 14, b"V8\nS<a@b.example>\nH?P?Return-Path: <\x81g>\n.\n")
    assert cf.header_block(frozenset("P")) == b"Return-Path: <a@b.example>\n"


def test_escaped_8bit_header_bytes_come_back_as_they_were_sent() -> None:
    cf = parse_control_file(CAPTURED["null-sender-8bit"], control("null-sender-8bit"))
    raw = control("null-sender-8bit")
    assert b"\xc4\xff\x80\xc2\xff\x80" in raw  # Sendmail's quoting of 0200-0237
    block = cf.header_block()
    subject = "t7100x0029 \u0100\u0080 caf\u00e9 $x ${y}".encode()
    assert b"Subject: " + subject + b"\n" in block
    assert "X-Price: $5 \u00ff\n".encode() in block
    assert cf.recipients == ("ft7100x0029@fwd.example",)
    assert cf.quarantine == "fwdmilter: null-sender mail held by the recipient's policy"


def test_records_continue_on_indented_lines_and_end_at_the_dot() -> None:
    data = (
        b"V8\nT100\nqreason that\n goes on\nS<>\nRPF:<a@x.example>\n"
        b"H??X-A: one\n\ttwo\n.\nH??X-After: ignored\n"
    )
    cf = parse_control_file("AAAAAAAA0000", data)
    assert cf.quarantine == "reason that  goes on"
    assert cf.header_block() == b"X-A: one\n\ttwo\n"


def test_headers_sendmail_cannot_have_meant_for_this_message_are_left_out() -> None:
    data = (
        b"V8\n${client_name}mx.example\n"
        b"H?${client_name}?X-Set: \x81\xa3\n"  # a long macro name: not resolvable
        b"H?${unset}?X-Unset: yes\n"
        b"H?$r?X-Proto: yes\n"  # $r is not saved in this file
        b"H??X-Cond: \x81?x\x81|y\x81.\n"  # a conditional: internal codes
        b"H?x?Full-Name: \x81x\n"
        b"H??X-Quoted: a\xff\xffb\xff\x81c\n"
        b"H?DFM?Date: kept\n"
        b".\n"
    )
    cf = parse_control_file("AAAAAAAA0000", data)
    assert cf.header_block() == b"X-Quoted: a\xffb\x81c\nDate: kept\n"


def test_not_a_control_file() -> None:
    with pytest.raises(MTAError, match="not a Sendmail control file"):
        parse_control_file("AAAAAAAA0000", b"hello\n")
    with pytest.raises(MTAError, match="record T is not a number"):
        parse_control_file("AAAAAAAA0000", b"V8\nTsoon\n")


# -- the adapter ----------------------------------------------------------------------


def test_open_mta_picks_sendmail(tmp_path: Path) -> None:
    mta = open_mta(MTASettings(type="sendmail", sendmail_queue_dir=str(tmp_path)))
    assert isinstance(mta, Sendmail) and mta.name == "sendmail"
    assert mta.held() == []


def test_held_lists_quarantined_messages_only(tmp_path: Path) -> None:
    queue = queue_with(tmp_path / "mqueue", "sendmail-bounce", "postfix-bounce")
    queue_with(queue, "null-sender-8bit", kind="qf")  # queued, not quarantined
    mta = Sendmail(str(queue))
    held = {m.queue_id: m for m in mta.held()}
    assert sorted(held) == sorted([CAPTURED["sendmail-bounce"], CAPTURED["postfix-bounce"]])
    m = held[CAPTURED["postfix-bounce"]]
    assert (m.sender, m.arrival, m.size) == ("", 1795449421, 2283)
    assert m.reason.endswith("Recipient address rejected: sink refuses it")
    assert mta.is_held(CAPTURED["postfix-bounce"])
    assert not mta.is_held(CAPTURED["null-sender-8bit"])


@pytest.mark.parametrize("name", ["sendmail-bounce", "postfix-bounce"])
def test_read_gives_a_bounce_the_dsn_module_understands(tmp_path: Path, name: str) -> None:
    queue = queue_with(tmp_path / "mqueue", name)
    raw = Sendmail(str(queue)).read(CAPTURED[name])
    report = dsn.parse(raw)
    assert report.kind == "failure"
    (failed,) = report.failed()
    assert failed.status == "5.1.1"
    original = dsn.returned_message(raw)
    assert original is not None
    assert b"\nSubject: t7100x00" in original and original.endswith(b"Hello.\n")


def test_read_of_a_message_that_is_not_held(tmp_path: Path) -> None:
    queue = queue_with(tmp_path / "mqueue", "null-sender-8bit", kind="qf")
    with pytest.raises(MTAError, match="is not quarantined"):
        Sendmail(str(queue)).read(CAPTURED["null-sender-8bit"])


def test_delete_removes_control_then_data_file(tmp_path: Path) -> None:
    queue = queue_with(tmp_path / "mqueue", "sendmail-bounce", "postfix-bounce")
    qid = CAPTURED["sendmail-bounce"]
    (queue / f"xf{qid}").write_text("transcript")
    mta = Sendmail(str(queue))
    assert mta.delete(qid) is True
    assert sorted(p.name for p in queue.iterdir()) == sorted(
        [f"hf{CAPTURED['postfix-bounce']}", f"df{CAPTURED['postfix-bounce']}"]
    )
    assert mta.delete(qid) is False


def test_delete_leaves_a_message_sendmail_holds_locked(tmp_path: Path) -> None:
    queue = queue_with(tmp_path / "mqueue", "sendmail-bounce")
    qid = CAPTURED["sendmail-bounce"]
    mta = Sendmail(str(queue), lock_wait=0.3)
    with (queue / f"hf{qid}").open("rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # as mailq does while listing
        with pytest.raises(MTAError, match="Sendmail is working on it"):
            mta.delete(qid)
        assert (queue / f"hf{qid}").exists() and (queue / f"df{qid}").exists()
    assert mta.delete(qid) is True


def test_delete_waits_out_a_short_lock(tmp_path: Path) -> None:
    queue = queue_with(tmp_path / "mqueue", "sendmail-bounce")
    qid = CAPTURED["sendmail-bounce"]
    f = (queue / f"hf{qid}").open("rb")
    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
    timer = threading.Timer(0.3, f.close)  # mailq done listing
    timer.start()
    try:
        assert Sendmail(str(queue), lock_wait=5).delete(qid) is True
    finally:
        timer.join()


def test_delete_never_touches_queued_mail(tmp_path: Path) -> None:
    queue = queue_with(tmp_path / "mqueue", "null-sender-8bit", kind="qf")
    qid = CAPTURED["null-sender-8bit"]
    assert Sendmail(str(queue)).delete(qid) is False
    assert (queue / f"qf{qid}").exists() and (queue / f"df{qid}").exists()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "6ANFv0gm/07232", "short", ""])
def test_queue_ids_are_checked(tmp_path: Path, bad: str) -> None:
    mta = Sendmail(str(tmp_path))
    for call in (mta.read, mta.delete, mta.is_held):
        with pytest.raises(MTAError, match="not a Sendmail queue id"):
            call(bad)


def test_several_queue_folders_and_subfolders(tmp_path: Path) -> None:
    base = tmp_path / "mqueue"
    queue_with(base / "q1", "sendmail-bounce")
    q2 = base / "q2"
    for sub in ("qf", "df", "xf"):
        (q2 / sub).mkdir(parents=True)
    qid = CAPTURED["postfix-bounce"]
    shutil.copyfile(DATA / "postfix-bounce.hf", q2 / "qf" / f"hf{qid}")
    shutil.copyfile(DATA / "postfix-bounce.df", q2 / "df" / f"df{qid}")
    mta = Sendmail(str(base / "q*"))
    assert sorted(m.queue_id for m in mta.held()) == sorted([CAPTURED["sendmail-bounce"], qid])
    assert dsn.returned_message(mta.read(qid)) is not None
    assert mta.delete(qid) is True
    assert list((q2 / "qf").iterdir()) == [] and list((q2 / "df").iterdir()) == []


def test_a_missing_queue_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MTAError, match="sendmail_queue_dir"):
        Sendmail(str(tmp_path / "nowhere")).held()


def test_a_cf_naming_another_queue_folder_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cf = tmp_path / "sendmail.cf"
    cf.write_text("O QueueDirectory=/var/spool/elsewhere\n")
    with caplog.at_level(logging.WARNING, logger="fwdmilter.mta.sendmail"):
        assert Sendmail(str(tmp_path), str(cf)).held() == []
    assert "QueueDirectory=/var/spool/elsewhere" in caplog.text
