"""Reading the SRS secrets file.

One secret per line, newest first: the first line signs, every line
verifies (see :class:`srs.SRS`). Blank lines are skipped; every other
character of a line, spaces included, belongs to the secret, so a file
shared with postsrsd reads the same here. The file must not be readable by
everyone: whoever has a secret can make this host relay bounces.
"""

from __future__ import annotations

import os
import stat

from fwdmilter.errors import ConfigError

__all__ = ["load_secrets"]

#: A larger "secrets file" is certainly the wrong file.
MAX_SIZE = 64 * 1024


def load_secrets(path: str) -> list[str]:
    """The secrets in the file at ``path``, newest first.

    Raises :class:`ConfigError` naming the file for a missing, unreadable,
    world-readable, oversized, non-UTF-8 or empty file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"srs.secrets_file: cannot open {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(f"srs.secrets_file: {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_mode & stat.S_IROTH:
            raise ConfigError(
                f"srs.secrets_file: {path} is readable by everyone "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod o-rwx {path}"
            )
        if st.st_size > MAX_SIZE:
            raise ConfigError(
                f"srs.secrets_file: {path} is {st.st_size} bytes, larger than a secrets file can be"
            )
        raw = f.read(MAX_SIZE + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"srs.secrets_file: {path} is not UTF-8 text") from None
    secrets = [line.rstrip("\r") for line in text.split("\n")]
    secrets = [s for s in secrets if s.strip()]
    if not secrets:
        raise ConfigError(f"srs.secrets_file: {path} holds no secret (one per line, newest first)")
    return secrets
