-- Helpers shared by the miltertest scripts of this folder (run.lua loads
-- them, then the script). The pytest module (test_miltertest.py) defines
-- the globals:
--   SOCKET      the daemon's socket ("unix:/run/...")
--   MTDIR       this folder
--   FWD_RCPT    a forwarding address in the daemon's store
--   FWD_TARGET  its target
--   TAG         a token unique to this run (queue ids, senders)
--   SCRIPT      the script to run
-- A script fails with fail() (or any Lua error); run.lua prints the reason.
-- What the pytest module checks, a script prints with mt.echo.

function fail(text)
  error(text, 2)
end

REPLY_NAMES = {
  [SMFIR_CONTINUE] = "continue", [SMFIR_ACCEPT] = "accept", [SMFIR_REJECT] = "reject",
  [SMFIR_TEMPFAIL] = "tempfail", [SMFIR_DISCARD] = "discard",
  [SMFIR_REPLYCODE] = "replycode", [SMFIR_SKIP] = "skip",
}

function reply_name(conn)
  local r = mt.getreply(conn)
  return REPLY_NAMES[r] or tostring(r)
end

-- Raise unless a miltertest call returned nil (its way of saying "done").
function check(err, what)
  if err ~= nil then
    fail(what .. ": " .. tostring(err))
  end
end

-- Raise unless the filter's last reply is one of the names given.
function expect(conn, what, ...)
  local got = reply_name(conn)
  for _, want in ipairs({...}) do
    if got == want then return end
  end
  fail(what .. ": the filter answered " .. got .. ", not " .. table.concat({...}, "/"))
end

-- Every action an MTA may offer, but for SMFIF_ADDRCPT_PAR: miltertest 1.6
-- records recipients added with SMFIR_ADDRCPT only, so without it the
-- milter's addrcpt shows in eom_check. (negotiate.lua offers it too.)
ACTIONS = SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_DELRCPT | SMFIF_CHGHDRS
  | SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_SETSYMLIST

-- Every protocol step, as Sendmail 8.17 and Postfix offer them (miltertest's
-- own default leaves some out once actions are given).
STEPS = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY
  | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA | SMFIP_SKIP
  | SMFIP_RCPT_REJ | SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT
  | SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_HDR_LEADSPC

-- A new connection, negotiated (milter protocol 6) with ACTIONS and every
-- protocol step. miltertest 1.6 sends its third argument as the protocol
-- steps and its fourth as the actions, the other way round from its manual
-- page (seen on the wire): hence the order here.
function connect(actions)
  local conn = mt.connect(SOCKET, 40, 0.25)
  if conn == nil then
    fail("cannot connect to " .. SOCKET)
  end
  check(mt.negotiate(conn, 6, STEPS, actions or ACTIONS), "negotiate")
  return conn
end

-- The SMTP client: a trusted one (127.0.0.1: SPF is skipped) unless told.
function client(conn, ip, helo)
  check(mt.conninfo(conn, "client.example", ip or "127.0.0.1"), "conninfo")
  check(mt.helo(conn, helo or "client.example"), "helo")
end

-- One complete transaction to the forwarding address, which the milter
-- must forward: recipient replaced by the target, trace header inserted.
-- The queue id goes in macro "i" at MAIL, as Sendmail and Postfix send it.
function forward(conn, n)
  local qid = "MT" .. TAG .. "N" .. n
  check(mt.macro(conn, SMFIC_MAIL, "i", qid), "macro i")
  check(mt.mailfrom(conn, "<s" .. TAG .. "@pass.example>"), "mail")
  expect(conn, "mail", "continue")
  check(mt.rcptto(conn, "<" .. FWD_RCPT .. ">"), "rcpt")
  expect(conn, "rcpt", "continue")
  check(mt.header(conn, "Subject", "transaction " .. n), "header")
  check(mt.header(conn, "Message-ID", "<" .. qid .. "@client.example>"), "header")
  check(mt.bodystring(conn, "Hello " .. n .. ".\r\n"), "body")
  check(mt.eom(conn), "eom")
  expect(conn, "eom", "continue", "accept")
  if not mt.eom_check(conn, MT_RCPTDELETE, "<" .. FWD_RCPT .. ">") then
    fail("transaction " .. n .. ": the forwarding address was not removed")
  end
  if not mt.eom_check(conn, MT_RCPTADD, "<" .. FWD_TARGET .. ">") then
    fail("transaction " .. n .. ": the target was not added")
  end
  if not mt.eom_check(conn, MT_HDRINSERT, "Fwdmilter-Trace") then
    fail("transaction " .. n .. ": no trace header")
  end
  mt.echo("forwarded " .. qid)
  return qid
end
