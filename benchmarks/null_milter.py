"""A pymilter that does nothing, as cheaply as a pymilter can: the baseline
that benchmarks/milter_rate.py compares fwdmilter with.

    python -m benchmarks.null_milter SOCKET

SOCKET as libmilter names it (``unix:/path`` or ``inet:PORT@HOST``). It runs
on libmilter and pymilter exactly as fwdmilter does (one thread per MTA
connection, Python callbacks under the GIL) but asks for as little as the
protocol allows: every callback that can be negotiated away is (connect,
HELO, MAIL, RCPT, DATA, headers, end of headers, body, unknown commands), no
actions, and one macro (the queue id) for every stage. What is left is what no
milter can avoid: the option negotiation of each connection and the reply to
end of message.
"""

from __future__ import annotations

import os
import sys

import Milter
import milter

# The stages whose macro lists a milter may set (smfi_setsymlist).
_STAGES = (
    Milter.M_CONNECT,
    Milter.M_HELO,
    Milter.M_ENVFROM,
    Milter.M_ENVRCPT,
    Milter.M_DATA,
    Milter.M_EOH,
    Milter.M_EOM,
)


class NullMilter(Milter.Base):  # type: ignore[misc]
    """Every callback of Milter.Base is marked ``nocallback`` but end of
    message, which the protocol always sends."""

    def negotiate(self, opts: list[int]) -> int:
        offered = opts[0]
        rc: int = super().negotiate(opts)
        # No actions but SETSYMLIST, which setting the macro lists needs.
        opts[0] = offered & Milter.SETSYMLIST
        if opts[0] & Milter.SETSYMLIST:
            # An empty list would mean the MTA's defaults: ask for the queue
            # id alone, as fwdmilter does for the stages it reads nothing at.
            for stage in _STAGES:
                self._ctx.setsymlist(stage, "i")
        return rc

    def eom(self) -> int:
        return int(Milter.CONTINUE)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.null_milter SOCKET", file=sys.stderr)
        return 2
    os.umask(0)  # Postfix connects as user postfix
    Milter.factory = NullMilter
    milter.set_flags(Milter.SETSYMLIST)
    Milter.runmilter("null-milter", argv[0], timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
