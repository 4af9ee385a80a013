-- The MTA drops the connection (no QUIT) at stage STAGE; a new connection
-- right after is served as usual. STAGE "mail-busy" drops while the milter
-- is still in its MAIL callback (an SPF check waiting on a DNS timeout).
local order = {"negotiate", "connect", "helo", "mail", "rcpt", "header", "body", "eom"}
local conn
if STAGE == "open" then
  -- Before negotiation: the socket is connected and closed.
  conn = mt.connect(SOCKET, 40, 0.25)
  if conn == nil then fail("cannot connect") end
elseif STAGE == "mail-busy" then
  conn = connect()
  client(conn, "127.0.0.2", "helo.pass.example")
  mt.set_timeout(1)  -- whole seconds; the SPF check takes dns.timeout (1.5 s)
  local err = mt.mailfrom(conn, "<busy" .. TAG .. "@temperror.example>")
  mt.echo("mail while busy: " .. tostring(err))
  mt.set_timeout(10)
else
  conn = connect()
  for _, stage in ipairs(order) do
    if stage == "connect" then
      check(mt.conninfo(conn, "client.example", "127.0.0.1"), "conninfo")
    elseif stage == "helo" then
      check(mt.helo(conn, "client.example"), "helo")
    elseif stage == "mail" then
      check(mt.mailfrom(conn, "<d" .. TAG .. "@pass.example>"), "mail")
    elseif stage == "rcpt" then
      check(mt.rcptto(conn, "<" .. FWD_RCPT .. ">"), "rcpt")
    elseif stage == "header" then
      check(mt.header(conn, "Subject", "dropped"), "header")
    elseif stage == "body" then
      check(mt.bodystring(conn, "dropped\r\n"), "body")
    elseif stage == "eom" then
      check(mt.eom(conn), "eom")
    end
    if stage == STAGE then break end
  end
end
mt.disconnect(conn, false)
mt.echo("dropped at " .. STAGE)

local again = connect()
client(again)
forward(again, 1)
check(mt.disconnect(again, true), "disconnect")
