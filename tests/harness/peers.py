"""The reference SRS implementations, driven from Python.

``MailSRS`` keeps one Perl process with Mail::SRS (Debian's
libmail-srs-perl) and talks to it over pipes, one JSON request a line;
its clock can be set, as ours can. ``PostSRSd`` runs a postsrsd 1.x daemon
on two free ports and queries it with Postfix's tcp_table protocol, as
Postfix does.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from tests.harness.proc import Process, free_port, wait_for_port

__all__ = ["MailSRS", "PeerRefused", "PostSRSd"]

_PERL = r"""
use strict; use warnings;
our $NOW;
BEGIN { *CORE::GLOBAL::time = sub () { defined $main::NOW ? $main::NOW : CORE::time() }; }
use Mail::SRS; use JSON::PP;
$| = 1;
# Addresses reach Mail::SRS as octets, as they do from an MTA, so that its
# lc folds ASCII letters only; JSON carries them as UTF-8.
my $json = JSON::PP->new->utf8(1)->canonical;
my %srs;
while (my $line = <STDIN>) {
    my $req = $json->decode($line);
    $main::NOW = $req->{now};
    utf8::encode($req->{$_}) for grep { defined $req->{$_} } qw(addr alias);
    my $key = $json->encode($req->{opts});
    my $s = $srs{$key} //= Mail::SRS->new(%{$req->{opts}});
    my $out = eval {
        $req->{op} eq 'forward' ? $s->forward($req->{addr}, $req->{alias})
                                : $s->reverse($req->{addr});
    };
    my $err = $@; $err =~ s/\s+at \S+ line \d+.*//s if $err;
    utf8::decode($out) if defined $out;
    print $json->encode($err ? {error => $err} : {ok => $out}), "\n";
}
"""


class PeerRefused(Exception):
    """The reference implementation refused the address."""


class MailSRS:
    """One long-lived Perl process running Mail::SRS (the Guarded variant)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["perl", "-e", _PERL],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
        )

    def _call(self, req: dict[str, object]) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req, ensure_ascii=False) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("Mail::SRS process died")
        answer = json.loads(line)
        if "error" in answer:
            raise PeerRefused(answer["error"])
        return str(answer["ok"])

    @staticmethod
    def _opts(
        secrets: Sequence[str], hash_length: int, hash_min: int, max_age: int, separator: str
    ) -> dict[str, object]:
        return {
            "Secret": list(secrets),
            "HashLength": hash_length,
            "HashMin": hash_min,
            "MaxAge": max_age,
            "Separator": separator,
        }

    def forward(
        self,
        addr: str,
        domain: str,
        secrets: Sequence[str],
        *,
        now: float | None = None,
        hash_length: int = 4,
        hash_min: int = 4,
        max_age: int = 21,
        separator: str = "=",
    ) -> str:
        return self._call(
            {
                "op": "forward",
                "addr": addr,
                "alias": domain,
                "now": now,
                "opts": self._opts(secrets, hash_length, hash_min, max_age, separator),
            }
        )

    def reverse(
        self,
        addr: str,
        secrets: Sequence[str],
        *,
        now: float | None = None,
        hash_length: int = 4,
        hash_min: int = 4,
        max_age: int = 21,
        separator: str = "=",
    ) -> str:
        return self._call(
            {
                "op": "reverse",
                "addr": addr,
                "now": now,
                "opts": self._opts(secrets, hash_length, hash_min, max_age, separator),
            }
        )

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()
        self.proc.wait(5)


class PostSRSd:
    """A postsrsd daemon on two free loopback ports (forward, reverse)."""

    def __init__(
        self,
        workdir: Path,
        domain: str,
        secrets: Sequence[str],
        separator: str = "=",
        hash_length: int = 4,
        hash_min: int = 4,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        secret_file = workdir / "postsrsd.secret"
        secret_file.write_text("".join(s + "\n" for s in secrets))
        secret_file.chmod(0o600)
        self.forward_port = free_port()
        self.reverse_port = free_port()
        self.proc = Process(
            [
                "postsrsd",
                f"-s{secret_file}",
                f"-d{domain}",
                f"-a{separator}",
                f"-n{hash_length}",
                f"-N{hash_min}",
                "-l127.0.0.1",
                "-4",
                f"-f{self.forward_port}",
                f"-r{self.reverse_port}",
            ],
            workdir / "postsrsd.log",
        )
        wait_for_port(self.forward_port)
        wait_for_port(self.reverse_port)

    def _query(self, port: int, addr: str) -> str:
        # Postfix's tcp_table(5): "get KEY\n", KEY %-encoded; replies
        # "200 VALUE", "500 reason" (not found) or "400 reason" (error).
        key = urllib.parse.quote(addr, safe="@=+-._!#$&'*/?^`{|}~", errors="surrogateescape")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"get {key}\n".encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        code, _, value = data.decode("utf-8", "surrogateescape").strip().partition(" ")
        value = urllib.parse.unquote(value, errors="surrogateescape")
        if code != "200":
            raise PeerRefused(f"{code} {value}")
        return value

    def forward(self, addr: str) -> str:
        return self._query(self.forward_port, addr)

    def reverse(self, addr: str) -> str:
        return self._query(self.reverse_port, addr)

    def stop(self) -> None:
        self.proc.stop()
