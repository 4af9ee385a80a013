"""fwdmilter-web: the recipient's side of a forwarder."""
