"""The SRS codec: format, verification, refusals, hostile input, IDN."""

from __future__ import annotations

import time

import pytest

from srs import (
    SRS,
    AddressError,
    BadHash,
    Expired,
    Malformed,
    NotSRS,
    SRSError,
    ascii_domain,
    looks_like_srs,
)

# 2026-11-23 12:00 UTC; day 20780, stamp "JM" -- matches the vectors below,
# which Mail::SRS and postsrsd printed for the secret "tops3cret" that day.
NOW = 20780 * 86400 + 43200
DAY = 86400


@pytest.fixture
def s() -> SRS:
    return SRS(secrets=["tops3cret", "older"], domain="fwd.example.net")


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("alice@example.org", "SRS0=C3Bs=JM=example.org=alice@fwd.example.net"),
        ("Alice.B@Example.ORG", "SRS0=HLjG=JM=Example.ORG=Alice.B@fwd.example.net"),
        (
            "SRS0=abcd=AB=x.org=bob@other.net",
            "SRS1=FxPz=other.net==abcd=AB=x.org=bob@fwd.example.net",
        ),
        (
            "SRS1=abcd=host.org==XYZW=AB=x.org=bob@other.net",
            "SRS1=P3QZ=host.org==XYZW=AB=x.org=bob@fwd.example.net",
        ),
    ],
)
def test_forward_matches_reference_vectors(s: SRS, sender: str, expected: str) -> None:
    assert s.forward(sender, now=NOW) == expected


def test_reverse_srs0_gives_the_original_sender(s: SRS) -> None:
    assert s.reverse("SRS0=C3Bs=JM=example.org=alice@fwd.example.net", now=NOW) == (
        "alice@example.org"
    )


def test_reverse_srs1_gives_the_first_forwarders_srs0(s: SRS) -> None:
    srs1 = "SRS1=FxPz=other.net==abcd=AB=x.org=bob@fwd.example.net"
    assert s.reverse(srs1, now=NOW) == "SRS0=abcd=AB=x.org=bob@other.net"
    info = s.parse(srs1, now=NOW)
    assert (info.kind, info.host, info.stamp) == ("SRS1", "other.net", None)


def test_chain_stays_one_hop_long(s: SRS) -> None:
    third = SRS(["third-secret"], "third.example")
    srs1 = s.forward("SRS0=abcd=AB=x.org=bob@other.net", now=NOW)
    again = third.forward(srs1, now=NOW)
    assert again.startswith("SRS1=")
    assert again.endswith("=other.net==abcd=AB=x.org=bob@third.example")
    assert third.reverse(again, now=NOW) == "SRS0=abcd=AB=x.org=bob@other.net"


def test_sender_in_own_domain_is_kept_unless_always_rewrite() -> None:
    s = SRS(["k"], "fwd.example.net")
    assert s.forward("bob@FWD.example.net", now=NOW) == "bob@FWD.example.net"
    always = SRS(["k"], "fwd.example.net", always_rewrite=True)
    assert always.forward("bob@fwd.example.net", now=NOW).startswith("SRS0=")


@pytest.mark.parametrize("sep", ["=", "+", "-"])
def test_initial_separator(sep: str) -> None:
    s = SRS(["k"], "fwd.example.net", separator=sep)
    out = s.forward("alice@example.org", now=NOW)
    assert out.startswith(f"SRS0{sep}")
    assert out.count("=") == 3 + (sep == "=")
    assert s.reverse(out, now=NOW) == "alice@example.org"
    srs1 = s.forward("SRS0+abcd=AB=x.org=bob@other.net", now=NOW)
    assert srs1.startswith(f"SRS1{sep}") and "=other.net=+abcd=" in srs1
    assert s.reverse(srs1, now=NOW) == "SRS0+abcd=AB=x.org=bob@other.net"


def test_hash_check_ignores_case(s: SRS) -> None:
    addr = "SRS0=C3Bs=JM=example.org=alice@fwd.example.net"
    assert s.reverse(addr.lower(), now=NOW) == "alice@example.org"
    assert s.reverse(addr.upper(), now=NOW) == "ALICE@EXAMPLE.ORG"


def test_only_first_secret_signs_and_every_secret_verifies() -> None:
    old = SRS(["old"], "fwd.example.net")
    rotated = SRS(["new", "old"], "fwd.example.net")
    by_old = old.forward("alice@example.org", now=NOW)
    assert rotated.reverse(by_old, now=NOW) == "alice@example.org"
    assert rotated.forward("alice@example.org", now=NOW) == SRS(["new"], "fwd.example.net").forward(
        "alice@example.org", now=NOW
    )
    with pytest.raises(BadHash):
        SRS(["new"], "fwd.example.net").reverse(by_old, now=NOW)


def test_hash_shorter_than_minimum_is_refused() -> None:
    long_ = SRS(["k"], "fwd.example.net", hash_length=8, hash_min_length=6)
    addr = long_.forward("alice@example.org", now=NOW)
    tag = addr.split("=")[1]
    assert len(tag) == 8
    assert long_.reverse(addr.replace(tag, tag[:6]), now=NOW) == "alice@example.org"
    with pytest.raises(BadHash, match="shorter than the minimum of 6"):
        long_.reverse(addr.replace(tag, tag[:5]), now=NOW)


def test_longer_hash_than_we_sign_still_verifies() -> None:
    short = SRS(["k"], "fwd.example.net", hash_length=4)
    longer = SRS(["k"], "fwd.example.net", hash_length=10)
    addr = longer.forward("alice@example.org", now=NOW)
    assert short.reverse(addr, now=NOW) == "alice@example.org"


def test_stamp_age_limits(s: SRS) -> None:
    addr = s.forward("alice@example.org", now=NOW)
    assert s.reverse(addr, now=NOW + 21 * DAY) == "alice@example.org"
    with pytest.raises(Expired, match="22 days old, older than the maximum of 21"):
        s.reverse(addr, now=NOW + 22 * DAY)
    with pytest.raises(Expired, match="future"):
        s.reverse(addr, now=NOW - DAY)


def test_stamps_cycle_every_1024_days(s: SRS) -> None:
    addr = s.forward("alice@example.org", now=NOW)
    assert s.reverse(addr, now=NOW + 1024 * DAY) == "alice@example.org"


def test_stamp_is_checked_after_the_hash(s: SRS) -> None:
    # A forged address learns nothing about stamps: the hash is refused first.
    with pytest.raises(BadHash):
        s.reverse("SRS0=AAAA=AA=example.org=alice@fwd.example.net", now=NOW)


def test_clock_is_used_when_no_time_is_given() -> None:
    s = SRS(["k"], "fwd.example.net", clock=lambda: NOW)
    assert s.forward("alice@example.org") == s.forward("alice@example.org", now=NOW)
    real = SRS(["k"], "fwd.example.net")
    assert real.reverse(real.forward("alice@example.org")) == "alice@example.org"
    assert SRS.stamp(time.time()) == real.forward("a@b.example").split("=")[2]


@pytest.mark.parametrize(
    ("address", "error", "text"),
    [
        ("alice@example.org", NotSRS, "not an SRS address"),
        ("nobody", NotSRS, "not an SRS address"),
        ("SRS2=x@fwd.example.net", NotSRS, "not an SRS address"),
        ("SRS0=C3Bs=JM=example.org=alice", Malformed, "has no domain"),
        ("SRS0=C3Bs=JM=example.org@fwd.example.net", Malformed, "four fields"),
        ("SRS0===example.org=alice@fwd.example.net", Malformed, "four fields"),
        ("SRS0=C3Bs=J=example.org=alice@fwd.example.net", Malformed, "day stamp"),
        ("SRS0=C3Bs=J1=example.org=alice@fwd.example.net", Malformed, "day stamp"),
        ("SRS0=C3B!=JM=example.org=alice@fwd.example.net", Malformed, "no valid hash"),
        ("SRS0=C3Bé=JM=example.org=alice@fwd.example.net", Malformed, "no valid hash"),
        ("SRS0=C3Bs=JM=example.org=a@b@fwd.example.net", Malformed, "hides an address"),
        ("SRS1=FxPz=other.net@fwd.example.net", Malformed, "three fields"),
        ("SRS1=FxPz=other.net=abcd@fwd.example.net", Malformed, "SRS0 address"),
        ("SRS0=C3Bt=JM=example.org=alice@fwd.example.net", BadHash, "does not verify"),
        ("SRS0=C3Bs=JN=example.org=alice@fwd.example.net", BadHash, "does not verify"),
        ("SRS0=C3Bs=JM=example.com=alice@fwd.example.net", BadHash, "does not verify"),
        ("SRS0=C3Bs=JM=example.org=alicf@fwd.example.net", BadHash, "does not verify"),
        ("SRS1=FxPa=other.net==abcd=AB=x.org=bob@fwd.example.net", BadHash, "does not verify"),
        ("SRS1=FxPz=other.net==abcd=AB=x.org=bop@fwd.example.net", BadHash, "does not verify"),
    ],
)
def test_refusals_are_typed_and_say_why(
    s: SRS, address: str, error: type[SRSError], text: str
) -> None:
    with pytest.raises(error, match=text):
        s.reverse(address, now=NOW)


@pytest.mark.parametrize(
    ("sender", "text"),
    [
        ("", "null sender"),
        ("<>", "null sender"),
        ("alice", "not of the form"),
        ("@example.org", "not of the form"),
        ("alice@", "not of the form"),
        ("<alice@example.org>", "not a plain mailbox"),
        ('"a@b"@example.org', "not a plain mailbox"),
        ("alice@exa=mple.org", "not a domain"),
        ("alice@exa mple.org", "not a domain"),
        ("alice@bü--cher.de", "not a valid IDN"),
    ],
)
def test_forward_refuses_what_is_not_a_sender(s: SRS, sender: str, text: str) -> None:
    with pytest.raises(AddressError, match=text):
        s.forward(sender, now=NOW)


def test_errors_derive_from_srserror() -> None:
    for cls in (AddressError, NotSRS, Malformed, BadHash, Expired):
        assert issubclass(cls, SRSError)
        assert issubclass(cls, Exception)


@pytest.mark.parametrize(
    "address",
    [
        "SRS0=C3Bs=JM=example.org=" + "a" * 100_000 + "@fwd.example.net",
        "SRS0=" + "=" * 10_000 + "@fwd.example.net",
        "SRS1=" + "=" * 10_000 + "@fwd.example.net",
        "SRS0=" + "@" * 5000,
        "SRS0=C3Bs=JM=" + "é" * 800 + "@x",
        "\x00SRS0=C3Bs=JM=example.org=alice@fwd.example.net",
        "SRS0=C3Bs=JM=example.org=alice\udcff@fwd.example.net",
    ],
)
def test_hostile_input_is_refused_quickly(s: SRS, address: str) -> None:
    start = time.perf_counter()
    with pytest.raises(SRSError):
        s.reverse(address, now=NOW)
    with pytest.raises(SRSError):
        s.forward(address * 2, now=NOW)
    assert time.perf_counter() - start < 0.05


def test_idn_domain_is_carried_as_its_a_label(s: SRS) -> None:
    out = s.forward("jose@bücher.de", now=NOW)
    assert out.isascii()
    assert "=xn--bcher-kva.de=jose@" in out
    assert s.reverse(out, now=NOW) == "jose@xn--bcher-kva.de"
    # The A-label sender signs the same, so either form reverses alike.
    assert s.forward("jose@xn--bcher-kva.de", now=NOW) == out


def test_utf8_local_part_is_carried_as_is(s: SRS) -> None:
    out = s.forward("josé@example.org", now=NOW)
    assert "=example.org=josé@fwd.example.net" in out
    assert s.reverse(out, now=NOW) == "josé@example.org"
    # The MAC folds ASCII letters only, as Perl's lc on octets does.
    assert s.reverse(out.replace("josé", "JOSé"), now=NOW) == "JOSé@example.org"


def test_quoted_local_part_round_trips(s: SRS) -> None:
    out = s.forward('"john smith"@example.org', now=NOW)
    assert out.startswith('"SRS0=') and out.endswith('=example.org=john smith"@fwd.example.net')
    assert s.reverse(out, now=NOW) == '"john smith"@example.org'
    escaped = s.forward(r'"a\"b"@example.org', now=NOW)
    assert s.reverse(escaped, now=NOW) == r'"a\"b"@example.org'


def test_looks_like_srs() -> None:
    assert looks_like_srs("SRS0=x=y=z=w@a")
    assert looks_like_srs("srs1+x@a")
    assert looks_like_srs('"SRS0=a b"@a')
    assert not looks_like_srs("SRS0@a")
    assert not looks_like_srs("alice@example.org")
    assert not looks_like_srs("SRS0=x")


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"secrets": []}, "at least one secret"),
        ({"secrets": ["ok", ""]}, "secret #2 is empty"),
        ({"hash_length": 0}, "hash_length"),
        ({"hash_length": 28}, "hash_length"),
        ({"hash_length": 4, "hash_min_length": 5}, "hash_min_length"),
        ({"max_age_days": 1024}, "max_age_days"),
        ({"separator": "."}, "separator"),
        ({"domain": "a@b"}, "domain"),
        ({"domain": ""}, "domain"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], text: str) -> None:
    args: dict[str, object] = {"secrets": ["k"], "domain": "fwd.example.net"} | kwargs
    with pytest.raises(ValueError, match=text):
        SRS(**args)  # type: ignore[arg-type]


def test_idn_srs_domain_is_used_as_a_label() -> None:
    s = SRS(["k"], "weiterleitung.bücher.de")
    assert s.domain == "weiterleitung.xn--bcher-kva.de"
    assert s.forward("a@example.org", now=NOW).endswith("@weiterleitung.xn--bcher-kva.de")


def test_ascii_domain() -> None:
    assert ascii_domain("josé@bücher.de") == "josé@xn--bcher-kva.de"
    assert ascii_domain("a@example.org") == "a@example.org"
    assert ascii_domain("no-at-sign") == "no-at-sign"
    assert ascii_domain("a@bü--cher.de") == "a@bü--cher.de"  # not a valid IDN: unchanged


def test_alias_key_is_postsrsd2s_database_key() -> None:
    # postsrsd 2 (src/srs.c, postsrsd_forward): base32hex of the SHA-1 of the
    # address, here of sha1("alice@example.org") = 45a6b241...35aac986.
    from srs import alias_key, local_part_too_long  # noqa: PLC0415

    assert alias_key("alice@example.org") == "8MJB4GD28B4NU14IQE1C746VKCQQLIC6"
    assert len(alias_key("x" * 900 + "@example.org")) == 32
    assert not local_part_too_long("u" * 64 + "@fwd.example")
    assert local_part_too_long("u" * 65 + "@fwd.example")
    assert local_part_too_long("é" * 33 + "@fwd.example")  # 66 octets in UTF-8
