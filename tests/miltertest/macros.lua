-- Macros the milter does not know, at every stage, odd values, and the
-- queue id under both names an MTA may use ("i" and "{i}"): the milter
-- ignores what it does not use and logs the queue id it is given.
local conn = connect()
check(mt.macro(conn, SMFIC_CONNECT, "j", "mta.example", "{daemon_name}", "MTA",
  "{if_addr}", "", "{x-unknown}", string.rep("x", 400)), "connect macros")
check(mt.conninfo(conn, "client.example", "127.0.0.1"), "conninfo")
check(mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.3", "{cipher}", "", "{unknown helo}", "\t"), "helo macros")
check(mt.helo(conn, "client.example"), "helo")
local braced = "MTB" .. TAG
check(mt.macro(conn, SMFIC_MAIL, "{i}", braced, "{auth_type}", "", "{mail_mailer}", "esmtp",
  "{unknown}", "%s%n%x"), "mail macros")
check(mt.mailfrom(conn, "<m" .. TAG .. "@pass.example>"), "mail")
expect(conn, "mail", "continue")
check(mt.macro(conn, SMFIC_RCPT, "{rcpt_mailer}", "esmtp", "{rcpt_host}", "", "{rcpt_addr}", FWD_RCPT,
  "{unknown rcpt}", "\226\128\148"), "rcpt macros")
check(mt.rcptto(conn, "<" .. FWD_RCPT .. ">"), "rcpt")
expect(conn, "rcpt", "continue")
check(mt.header(conn, "Subject", "macros"), "header")
check(mt.bodystring(conn, "body\r\n"), "body")
check(mt.eom(conn), "eom")
expect(conn, "eom", "continue", "accept")
mt.echo("braced " .. braced)
-- The plain name, on the same connection: macros of one transaction do not
-- leak into the next.
forward(conn, 2)
check(mt.disconnect(conn, true), "disconnect")
