"""The SRS secrets file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwdmilter.errors import ConfigError
from fwdmilter.secrets import load_secrets


def write(path: Path, text: str | bytes, mode: int = 0o600) -> str:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)
    return str(path)


def test_one_secret_a_line_newest_first(tmp_path: Path) -> None:
    path = write(tmp_path / "s", "newest\n\nolder one \r\noldest")
    assert load_secrets(path) == ["newest", "older one ", "oldest"]


def test_group_readable_is_fine(tmp_path: Path) -> None:
    assert load_secrets(write(tmp_path / "s", "k\n", 0o640)) == ["k"]


@pytest.mark.parametrize(
    ("content", "mode", "text"),
    [
        ("k\n", 0o644, "readable by everyone .mode 0644.; run: chmod o-rwx"),
        ("k\n", 0o604, "readable by everyone"),
        ("", 0o600, "holds no secret"),
        ("\n \n\n", 0o600, "holds no secret"),
        (b"\xff\xfe\n", 0o600, "not UTF-8"),
        ("k" * 70000, 0o600, "larger than a secrets file"),
    ],
)
def test_bad_files_are_refused_with_the_reason(
    tmp_path: Path, content: str | bytes, mode: int, text: str
) -> None:
    path = write(tmp_path / "s", content, mode)
    with pytest.raises(ConfigError, match=rf"srs.secrets_file: {path}.* {text}"):
        load_secrets(path)


def test_missing_file_and_symlink_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot open .*No such file"):
        load_secrets(str(tmp_path / "absent"))
    target = write(tmp_path / "real", "k\n")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ConfigError, match="cannot open"):
        load_secrets(str(tmp_path / "link"))
    with pytest.raises(ConfigError, match="not a regular file"):
        load_secrets(str(tmp_path))
