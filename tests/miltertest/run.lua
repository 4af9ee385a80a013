-- The entry point the pytest module gives miltertest: loads the helpers,
-- runs the script named by SCRIPT, and prints any error before failing
-- (miltertest 1.6 exits 1 on a Lua error without saying which).
dofile(MTDIR .. "/common.lua")
local ok, err = pcall(dofile, MTDIR .. "/" .. SCRIPT)
if not ok then
  mt.echo("FAIL: " .. tostring(err))
  error(err)
end
