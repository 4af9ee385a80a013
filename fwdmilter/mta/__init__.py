"""Held-queue adapters; :func:`open_mta` picks the one ``mta.type`` names."""

from __future__ import annotations

from fwdmilter.config import MTASettings
from fwdmilter.errors import ConfigError
from fwdmilter.mta.base import MTA, QueuedMessage
from fwdmilter.mta.postfix import Postfix
from fwdmilter.mta.sendmail import Sendmail

__all__ = ["MTA", "QueuedMessage", "open_mta"]


def open_mta(settings: MTASettings) -> MTA:
    if settings.type == "postfix":
        return Postfix(settings.postfix_config_dir, settings.command_dir)
    if settings.type == "sendmail":
        return Sendmail(settings.sendmail_queue_dir, settings.sendmail_cf)
    raise ConfigError(f"mta.type: {settings.type!r} has no queue adapter in this version")
