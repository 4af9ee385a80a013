-- RSET: Sendmail and Postfix send an abort, then the next MAIL. A new MAIL
-- straight after RCPT (no abort in between) must start afresh too.
local conn = connect()
client(conn)
check(mt.mailfrom(conn, "<old" .. TAG .. "@softfail.example>"), "mail")
check(mt.rcptto(conn, "<" .. FWD_RCPT .. ">"), "rcpt")
check(mt.abort(conn), "abort (RSET)")
forward(conn, 1)

check(mt.mailfrom(conn, "<old" .. TAG .. "@softfail.example>"), "mail")
check(mt.rcptto(conn, "<other" .. TAG .. "@elsewhere.example>"), "rcpt")
forward(conn, 2)
if mt.eom_check(conn, MT_RCPTDELETE, "<other" .. TAG .. "@elsewhere.example>") then
  fail("a recipient of the abandoned transaction was acted on")
end
check(mt.disconnect(conn, true), "disconnect")
