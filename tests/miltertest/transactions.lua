-- Several transactions on one connection: each starts clean, a refused
-- recipient leaves nothing behind, the connection stays usable.
local conn = connect()
client(conn)
forward(conn, 1)
forward(conn, 2)

-- An unknown forwarding address: 550 at RCPT, then the client gives up.
local unknown = "<nobody" .. TAG .. "@fwd.example>"
check(mt.mailfrom(conn, "<s" .. TAG .. "@pass.example>"), "mail")
check(mt.rcptto(conn, unknown), "rcpt")
expect(conn, "unknown rcpt", "replycode")
check(mt.abort(conn), "abort")

local qid = forward(conn, 3)
if mt.eom_check(conn, MT_RCPTDELETE, unknown) then
  fail("the refused recipient of the previous transaction was acted on")
end
forward(conn, 4)
check(mt.disconnect(conn, true), "disconnect")
