-- What the milter asks for when the MTA offers everything: it prints the
-- actions and protocol steps it negotiated; the pytest module compares
-- them with the minimal sets fwdmilter.milter documents.
local all = ACTIONS | SMFIF_ADDRCPT_PAR
local conn = connect(all)
local actions = {}
for _, name in ipairs({
  "SMFIF_ADDHDRS", "SMFIF_CHGBODY", "SMFIF_ADDRCPT", "SMFIF_DELRCPT", "SMFIF_CHGHDRS",
  "SMFIF_QUARANTINE", "SMFIF_CHGFROM", "SMFIF_ADDRCPT_PAR", "SMFIF_SETSYMLIST",
}) do
  if mt.test_action(conn, _G[name]) then
    table.insert(actions, name)
  end
end
mt.echo("actions=" .. table.concat(actions, ","))
local steps = {}
for _, name in ipairs({
  "SMFIP_NOCONNECT", "SMFIP_NOHELO", "SMFIP_NOMAIL", "SMFIP_NORCPT", "SMFIP_NOBODY",
  "SMFIP_NOHDRS", "SMFIP_NOEOH", "SMFIP_NOUNKNOWN", "SMFIP_NODATA", "SMFIP_SKIP",
  "SMFIP_RCPT_REJ", "SMFIP_NR_CONN", "SMFIP_NR_HELO", "SMFIP_NR_MAIL", "SMFIP_NR_RCPT",
  "SMFIP_NR_DATA", "SMFIP_NR_UNKN", "SMFIP_NR_EOH", "SMFIP_NR_HDR", "SMFIP_NR_BODY",
  "SMFIP_HDR_LEADSPC",
}) do
  if mt.test_option(conn, _G[name]) then
    table.insert(steps, name)
  end
end
mt.echo("steps=" .. table.concat(steps, ","))
check(mt.disconnect(conn, true), "disconnect")
