"""Cross-tests of the SRS codec against Mail::SRS and a running postsrsd.

For the same secret and day, all three must write the same bytes, and each
must reverse what the others wrote, letter case smashed or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from srs import SRS, SRSError
from tests.harness.peers import MailSRS, PeerRefused, PostSRSd

DOMAIN = "fwd.example.net"
SECRETS = ["tops3cret", "older secret"]
NOW = 20780 * 86400 + 43200

SENDERS = [
    "alice@example.org",
    "Alice.B@Example.ORG",
    "bob+tag@sub.example.co.uk",
    "o'reilly@example.com",
    "a=b=c@example.org",
    "josé@example.org",
    "SRS0=abcd=AB=x.org=bob@other.net",
    "SRS0+abcd=AB=x.org=bob@other.net",
    "srs0-abcd=AB=x.org=bob@other.net",
    "SRS1=abcd=host.org==XYZW=AB=x.org=bob@other.net",
]


def _smash(text: str) -> str:
    """Upper case as an MTA smashes it: ASCII letters of the octets only."""
    return text.encode("utf-8").upper().decode("utf-8")


def _reversal_of(sender: str) -> str:
    """What a bounce to the forwarded address goes back to."""
    tag = sender[:4].upper()
    if tag == "SRS0":
        return "SRS0" + sender[4:]  # the SRS1 we write spells the tag anew
    if tag == "SRS1":
        # The SRS1 of another forwarder is re-signed: its bounce goes to the
        # first forwarder's SRS0 address.
        _, host, rest = sender[5:].rpartition("@")[0].split("=", 2)
        return "SRS0" + rest + "@" + host
    return sender


@pytest.mark.parametrize("separator", ["=", "+", "-"])
@pytest.mark.parametrize("sender", SENDERS)
def test_mail_srs_and_we_write_and_read_the_same(
    mail_srs: MailSRS, sender: str, separator: str
) -> None:
    ours = SRS(SECRETS, DOMAIN, separator=separator)
    theirs = mail_srs.forward(sender, DOMAIN, SECRETS, now=NOW, separator=separator)
    assert ours.forward(sender, now=NOW) == theirs
    expected = _reversal_of(sender)
    assert ours.reverse(theirs, now=NOW) == expected
    assert mail_srs.reverse(theirs, SECRETS, now=NOW, separator=separator) == expected
    # Case smashed on the way back: both still accept it.
    smashed = _smash(theirs)
    assert ours.reverse(smashed, now=NOW) == _smash(expected)
    assert mail_srs.reverse(smashed, SECRETS, now=NOW) == _smash(expected)


def test_where_we_differ_from_mail_srs_an_address_literal_is_quoted(mail_srs: MailSRS) -> None:
    # "[" and "]" may not stand unquoted in a local part (RFC 5321 section
    # 4.1.2); Mail::SRS writes them bare, which strict MTAs refuse. We quote.
    theirs = mail_srs.forward("x@[192.0.2.1]", DOMAIN, SECRETS, now=NOW)
    ours = SRS(SECRETS, DOMAIN).forward("x@[192.0.2.1]", now=NOW)
    assert ours == f'"{theirs.rpartition("@")[0]}"@{DOMAIN}'
    assert SRS(SECRETS, DOMAIN).reverse(ours, now=NOW) == "x@[192.0.2.1]"
    assert SRS(SECRETS, DOMAIN).reverse(theirs, now=NOW) == "x@[192.0.2.1]"


def test_mail_srs_accepts_our_addresses_across_the_age_window(mail_srs: MailSRS) -> None:
    ours = SRS(SECRETS, DOMAIN)
    addr = ours.forward("alice@example.org", now=NOW)
    for age in (0, 1, 21):
        assert mail_srs.reverse(addr, SECRETS, now=NOW + age * 86400) == "alice@example.org"
    with pytest.raises(PeerRefused, match="Invalid timestamp"):
        mail_srs.reverse(addr, SECRETS, now=NOW + 22 * 86400)
    with pytest.raises(SRSError):
        ours.reverse(addr, now=NOW + 22 * 86400)


def test_mail_srs_refuses_what_we_refuse(mail_srs: MailSRS) -> None:
    ours = SRS(SECRETS, DOMAIN)
    forged = "SRS0=AAAA=JM=example.org=alice@" + DOMAIN
    with pytest.raises(PeerRefused, match="Invalid hash"):
        mail_srs.reverse(forged, SECRETS, now=NOW)
    with pytest.raises(SRSError):
        ours.reverse(forged, now=NOW)


def test_key_rotation_matches_mail_srs(mail_srs: MailSRS) -> None:
    by_old = mail_srs.forward("alice@example.org", DOMAIN, ["older secret"], now=NOW)
    assert SRS(SECRETS, DOMAIN).reverse(by_old, now=NOW) == "alice@example.org"
    ours_new = SRS(SECRETS, DOMAIN).forward("alice@example.org", now=NOW)
    assert mail_srs.reverse(ours_new, ["tops3cret"], now=NOW) == "alice@example.org"


@pytest.fixture(scope="module", params=["=", "+", "-"])
def postsrsd(request: pytest.FixtureRequest, session_dir: Path) -> Iterator[PostSRSd]:
    sep = request.param
    daemon = PostSRSd(session_dir / f"postsrsd{ord(sep)}", DOMAIN, SECRETS, separator=sep)
    yield daemon
    daemon.stop()


POSTSRSD_SENDERS = [s for s in SENDERS if s.isascii()]


@pytest.mark.parametrize("sender", POSTSRSD_SENDERS)
def test_postsrsd_and_we_write_and_read_the_same(
    postsrsd: PostSRSd, sender: str, request: pytest.FixtureRequest
) -> None:
    sep = request.node.callspec.params["postsrsd"]
    ours = SRS(SECRETS, DOMAIN, separator=sep)
    before = ours.forward(sender, now=time.time())
    theirs = postsrsd.forward(sender)
    after = ours.forward(sender, now=time.time())
    assert theirs in (before, after)  # equal, unless a day began in between
    expected = _reversal_of(sender)
    assert ours.reverse(theirs) == expected
    assert postsrsd.reverse(before) == expected
    assert postsrsd.reverse(_smash(before)) == _smash(expected)
    assert ours.reverse(_smash(theirs)) == _smash(expected)


def test_postsrsd_refuses_what_we_refuse(postsrsd: PostSRSd) -> None:
    ours = SRS(SECRETS, DOMAIN)
    good = ours.forward("alice@example.org")
    tag = good.split("=")[1]
    forged = good.replace(tag, "AAAA" if tag.upper() != "AAAA" else "BBBB")
    with pytest.raises(PeerRefused):
        postsrsd.reverse(forged)
    with pytest.raises(SRSError):
        ours.reverse(forged)
    expired = SRS(SECRETS, DOMAIN).forward("alice@example.org", now=time.time() - 30 * 86400)
    with pytest.raises(PeerRefused):
        postsrsd.reverse(expired)
    with pytest.raises(SRSError):
        ours.reverse(expired)


def _postsrsd2_hash(secret: str, *fields: str, length: int = 4) -> str:
    """postsrsd 2.3+'s hash (src/srs2.c, srs_hash_create_v, SRS_HASH_BASECHARS),
    from its documented algorithm: HMAC-SHA1 over the lower-cased fields,
    written in the base64url alphabet (RFC 4648 section 5), cut to length."""
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    mac = hmac.new(secret.encode(), "".join(fields).lower().encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(mac).decode()[:length]


@pytest.mark.parametrize("sender", POSTSRSD_SENDERS[:5])
def test_base64url_hashes_are_postsrsd2s_and_both_alphabets_reverse(
    postsrsd: PostSRSd, sender: str
) -> None:
    url = SRS(SECRETS, DOMAIN, hash_alphabet="base64url")
    classic = SRS(SECRETS, DOMAIN)
    ours = url.forward(sender, now=NOW)
    user, _, host = sender.rpartition("@")
    stamp = SRS.stamp(NOW)
    tag = _postsrsd2_hash(SECRETS[0], stamp, host, user)
    assert ours == f"SRS0={tag}={stamp}={host}={user}@{DOMAIN}"
    # What postsrsd 1 (base64) issued, a site on base64url still reverses,
    # and the other way round, case smashed or not.
    old = postsrsd.forward(sender)
    for address in (old, _smash(old)):
        assert url.reverse(address).lower() == classic.reverse(old).lower()
    for address in (ours, _smash(ours)):
        assert classic.reverse(address, now=NOW).lower() == sender.lower()


def test_the_alphabets_differ_where_the_hash_has_plus_or_slash() -> None:
    url = SRS(SECRETS, DOMAIN, hash_length=8, hash_alphabet="base64url")
    classic = SRS(SECRETS, DOMAIN, hash_length=8)
    differing = 0
    for i in range(200):
        sender = f"user{i}@example.org"
        a, b = classic.forward(sender, now=NOW), url.forward(sender, now=NOW)
        assert "/" not in b and "+" not in b.split("=")[1]
        if a != b:
            differing += 1
            assert a.translate(str.maketrans("+/", "-_")) == b
        assert url.reverse(a, now=NOW) == classic.reverse(b, now=NOW) == sender
    # 2 of 64 characters: about one 8-character hash in five has a + or a /.
    assert differing > 20
