"""The test harness: real components started on loopback for the suite.

Every server here is private to the test session: it listens on a free
port of 127.0.0.1, keeps its files under the session's temporary folder
(except what Postfix's unprivileged user must reach: data directories and
milter sockets, in a root-owned folder under /run removed at the end), and
is stopped when the session ends. Nothing relies on, or touches, services
the machine already runs.

    proc.py           free ports, child processes that are always reaped
    peers.py          Mail::SRS and postsrsd, the reference SRS implementations
    postfix.py        PostfixInstance: a private Postfix tuned for fast tests
    dns.py            DnsServer: dnsmasq serving the SPF test zones (ZONES)
    sink.py           Sink: the final mailboxes, an ESMTP server on threads
    smtp.py           send / Client: an SMTP client that keeps every reply
    probe_milter.py   a tiny pymilter that shows which mail reached a milter
    mail_fixtures.py  the fixtures: dns, sink, inner, mail, border_factory...
"""
