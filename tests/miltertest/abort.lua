-- The MTA aborts the transaction at each stage (a client's RSET, or a
-- message refused elsewhere); the next transaction on the same connection
-- is forwarded as if nothing had happened.
local conn = connect()
client(conn)
local n = 0
for _, stage in ipairs({"mail", "rcpt", "header", "body"}) do
  check(mt.mailfrom(conn, "<a" .. TAG .. "@pass.example>"), "mail")
  if stage ~= "mail" then
    check(mt.rcptto(conn, "<" .. FWD_RCPT .. ">"), "rcpt")
  end
  if stage == "header" or stage == "body" then
    check(mt.header(conn, "Subject", "to be aborted"), "header")
  end
  if stage == "body" then
    check(mt.bodystring(conn, "aborted body\r\n"), "body")
  end
  check(mt.abort(conn), "abort after " .. stage)
  n = n + 1
  forward(conn, n)
  mt.echo("aborted after " .. stage)
end
check(mt.disconnect(conn, true), "disconnect")
