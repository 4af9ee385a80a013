"""The errors of fwdmilter, under one base class::

    FwdmilterError
    ├── ConfigError          the configuration or the secrets file is unusable:
    │                        the daemon refuses to start, fwdctl exits 2
    ├── StoreError           the store refused an operation
    │   ├── StoreUnavailable the store cannot be reached now (the milter
    │   │                    answers 4xx and the client retries)
    │   └── StoreSchemaError the stored data is corrupt or from a newer
    │                        version (the daemon refuses to start)
    ├── DSNError             a bounce that is not a parsable RFC 3464 report
    └── MTAError             the MTA's queue tools failed or are missing

SRS refusals have their own tree in :mod:`srs.errors`. The text of an error
is for logs and admins; the SMTP client only ever sees the fixed texts of
:mod:`fwdmilter.replies`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DSNError",
    "FwdmilterError",
    "MTAError",
    "StoreError",
    "StoreSchemaError",
    "StoreUnavailable",
]


class FwdmilterError(Exception):
    """Something fwdmilter cannot do."""


class ConfigError(FwdmilterError):
    """The configuration is unusable; the text names the key."""


class StoreError(FwdmilterError):
    """The store refused an operation."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; retrying later may succeed."""


class StoreSchemaError(StoreError):
    """The stored data is corrupt, or written by a newer fwdmilter."""


class DSNError(FwdmilterError):
    """The message is not a delivery status notification that parses."""


class MTAError(FwdmilterError):
    """The MTA's queue tools failed."""
