"""milter.instance: a stable name for the entries a milter holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fwdmilter import config, runtime
from fwdmilter.errors import ConfigError

BASE = '[srs]\ndomain = "fwd.example"\n'


def test_instance_defaults_to_the_hostname_so_old_entries_keep_matching() -> None:
    cfg = config.loads(BASE + '[milter]\nhostname = "mx1.fwd.example"\n')
    assert cfg.milter.instance == "mx1.fwd.example"
    assert cfg.as_dict()["milter"]["instance"] == "mx1.fwd.example"


def test_instance_set_apart_from_the_hostname() -> None:
    cfg = config.loads(BASE + '[milter]\nhostname = "mx1.fwd.example"\ninstance = "mx1"\n')
    assert (cfg.milter.hostname, cfg.milter.instance) == ("mx1.fwd.example", "mx1")


@pytest.mark.parametrize("bad", ["a/b", "two words", "tab\\there", "new\\nline"])
def test_an_instance_that_cannot_name_entries_is_refused(bad: str) -> None:
    # ``bad`` as a TOML basic string (its escapes are TOML's).
    text = BASE + f'[milter]\ninstance = "{bad}"\n'
    expected = re.escape("milter.instance: must be a name without spaces or '/'")
    with pytest.raises(ConfigError, match=expected):
        config.loads(text)


def test_the_policy_names_entries_after_the_instance(tmp_path: Path) -> None:
    secrets = tmp_path / "srs-secrets"
    secrets.write_text("s3cret-s3cret-s3cret\n")
    secrets.chmod(0o600)
    cfg = config.loads(
        BASE.replace("\n", f'\nsecrets_file = "{secrets}"\n', 1)
        + '[milter]\nhostname = "mx1.fwd.example"\ninstance = "mx1"\n'
    )
    settings = runtime.policy_settings(cfg)
    assert (settings.hostname, settings.instance) == ("mx1.fwd.example", "mx1")
