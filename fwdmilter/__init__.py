"""fwdmilter: forward mail without breaking SPF, without backscatter, without losing it.

A milter for Postfix and Sendmail. See README.md and docs/design.md.
"""

__version__ = "0.1.0"
