"""Loading and validating the TOML configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwdmilter import config
from fwdmilter.errors import ConfigError

MINIMAL = '[srs]\ndomain = "fwd.example.net"\n'

ISSUE_EXAMPLE = """
[milter]
socket = "unix:/run/fwdmilter/milter.sock"
[srs]
domain = "fwd.example.net"
secrets_file = "/etc/fwdmilter/srs-secrets"
hash_length = 4
hash_min_length = 4
max_age_days = 21
separator = "="
[forwarding]
domains = ["fwd.example.net"]
[spf]
fail = "reject"
softfail = "accept"
neutral = "accept"
none = "accept"
permerror = "accept"
temperror = "tempfail"
[dns]
nameservers = ["127.0.0.1"]
port = 53
timeout = 3.0
[store]
url = "redis://127.0.0.1:6379/0"
[mta]
submit = "127.0.0.1:25"
postfix_config_dir = "/etc/postfix"
[trusted]
networks = []
"""


def test_the_documented_example_loads() -> None:
    cfg = config.loads(ISSUE_EXAMPLE)
    assert cfg.srs.domain == "fwd.example.net"
    assert cfg.forwarding.domains == ("fwd.example.net",)
    assert cfg.dns.nameservers == ("127.0.0.1",)
    assert cfg.dns.timeout == 3.0
    assert cfg.trusted.networks == ()
    assert cfg.spf.action("fail") == "reject"
    assert cfg.spf.action("pass") == "accept"
    assert cfg.spf.action("temperror") == "tempfail"


def test_defaults() -> None:
    cfg = config.loads(MINIMAL)
    assert cfg.store.url == config.DEFAULT_STORE_URL == "sqlite:///var/lib/fwdmilter/state.db"
    assert cfg.store.on_error == "tempfail"
    assert cfg.held.retention_days == 30
    assert cfg.trusted.networks == ("127.0.0.0/8", "::1/128")
    assert cfg.srs.rewrite == "always"
    assert cfg.milter.hostname


def test_the_shipped_example_file_loads() -> None:
    path = Path(__file__).parents[2] / "docs" / "fwdmilter.example.toml"
    cfg = config.loads(path.read_text().replace("@HOSTNAME@", "mx.example.net"), str(path))
    assert cfg.srs.domain == "mx.example.net"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[srs]\n", "srs.domain: must be set"),
        (MINIMAL + "[bogus]\nx = 1\n", "bogus: unknown section"),
        (MINIMAL + "[spf]\nfial = 'reject'\n", r"spf.fial: unknown key \(known in \[spf\]: fail,"),
        (
            MINIMAL + "[spf]\nfail = 'bounce'\n",
            "spf.fail: must be one of 'reject', 'tempfail', 'accept', not 'bounce'",
        ),
        (MINIMAL + "[dns]\ntimeout = 'soon'\n", "dns.timeout: must be a number, not 'soon'"),
        (MINIMAL + "[dns]\nport = 70000\n", "dns.port: must be from 1 to 65535"),
        (
            MINIMAL + "[dns]\nnameservers = ['dns.example']\n",
            "dns.nameservers: must be a list of IP addresses",
        ),
        (
            MINIMAL + "[trusted]\nnetworks = ['10.0.0.0/33']\n",
            "trusted.networks: must be a list of networks",
        ),
        (MINIMAL + "[milter]\nsocket = '/run/x.sock'\n", "milter.socket: must be 'unix:PATH'"),
        (MINIMAL + "[milter]\nsocket = 'inet:99999@127.0.0.1'\n", "milter.socket: must be"),
        (MINIMAL + "[store]\nurl = 'postgres://x'\n", "store.url: must be a store URL"),
        (MINIMAL + "[store]\non_error = 'bounce'\n", "store.on_error: must be one of"),
        (MINIMAL + "[mta]\nsubmit = 'localhost'\n", "mta.submit: must be HOST:PORT"),
        (MINIMAL + "[mta]\ntype = 'exim'\n", "mta.type: must be one of 'postfix', 'sendmail'"),
        (MINIMAL + "[held]\nalert_to = ['postmaster']\n", "held.alert_to: must be a mail address"),
        (MINIMAL + "[forwarding]\ndomains = 'a b'\n", "forwarding.domains: must be a domain name"),
        (
            '[srs]\ndomain = "x.example"\nhash_length = 4\nhash_min_length = 5\n',
            "srs.hash_min_length: must not exceed",
        ),
        (
            '[srs]\ndomain = "x.example"\nhash_length = true\n',
            "srs.hash_length: must be a whole number",
        ),
        ('[srs]\ndomain = "x.example"\nrewrite = "when-needed"\n', "srs.outbound_ips: must list"),
        (
            '[srs]\ndomain = "x.example"\nhash_alphabet = "base32"\n',
            "srs.hash_alphabet: must be one of 'base64', 'base64url', not 'base32'",
        ),
        (MINIMAL + "[held]\nmax_entries_per_bounce = 0\n", "held.max_entries_per_bounce: must be"),
        ("[srs\n", "not valid TOML"),
        ("srs = 3\n", r"srs: must be a table"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.loads(text)


def test_load_reads_path_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.toml"
    path.write_text(MINIMAL)
    assert config.load(path).path == str(path)
    monkeypatch.setenv("FWDMILTER_CONFIG", str(path))
    assert config.load().srs.domain == "fwd.example.net"
    with pytest.raises(ConfigError, match="cannot read the configuration: No such file"):
        config.load(tmp_path / "absent.toml")


def test_as_dict_masks_the_store_password() -> None:
    cfg = config.loads(MINIMAL + "[store]\nurl = 'redis://fwd:s3cret@redis.example:6379/0'\n")
    shown = cfg.as_dict()
    assert shown["store"]["url"] == "redis://fwd:***@redis.example:6379/0"
    assert "s3cret" not in repr(shown)
    assert shown["forwarding"]["domains"] == []


# -- [web] (fwdweb) ------------------------------------------------------------------


def test_web_settings_load_and_check_the_tls_pair() -> None:
    from fwdmilter import config as cfgmod  # noqa: PLC0415

    base = '[srs]\ndomain = "fwd.example"\n'
    cfg = cfgmod.loads(base + '[web]\nbase_url = "https://fwd.example"\nconfirm_hours = 1\n')
    assert cfg.web.base_url == "https://fwd.example" and cfg.web.confirm_hours == 1.0
    assert cfg.forwarding.confirm_targets is False
    assert cfg.forwarding.max_targets == 10
    cfg = cfgmod.loads(base + "[forwarding]\nmax_targets = 1000\n")
    assert cfg.forwarding.max_targets == 1000
    for bad in (0, 1001):
        with pytest.raises(cfgmod.ConfigError, match=r"^forwarding\.max_targets: must be from 1"):
            cfgmod.loads(base + f"[forwarding]\nmax_targets = {bad}\n")
    with pytest.raises(cfgmod.ConfigError, match=r"^web\.tls_cert_file: needs web\.tls_key_file"):
        cfgmod.loads(base + '[web]\ntls_cert_file = "/etc/ssl/c.pem"\n')
    with pytest.raises(cfgmod.ConfigError, match=r"^web\.base_url: must be an http"):
        cfgmod.loads(base + '[web]\nbase_url = "fwd.example"\n')
    with pytest.raises(cfgmod.ConfigError, match=r"^forwarding\.confirm_targets: must be true"):
        cfgmod.loads(base + '[forwarding]\nconfirm_targets = "yes"\n')
