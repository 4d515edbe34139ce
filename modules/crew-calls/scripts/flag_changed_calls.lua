-- Flag calls changed after publishing (on change): when the time or place of a published
-- call changes, tick its "Changed after publish" so the stage manager knows to send it again.
-- It runs after each change a person commits (switch it on in Scripts); its marks are staged
-- for review like any script's.

local CALLS = "crew_calls.Calls"
local WHAT = { call_time = "call time", location = "location" }

-- still a call (it may have been deleted or taken out of Calls since)
local function is_call(id)
  if not core.exists(id) then return false end
  for _, t in ipairs(core.tables_of(id)) do
    if t == CALLS then return true end
  end
  return false
end

local done = {}
for _, change in ipairs(core.context().changes) do
  local id = change.entity_id
  if change.event == "field_changed" and is_call(id) then
    local label = core.get_field(id, CALLS, "label") or "(unnamed call)"
    if change.field == "location" then
      print(("%s: location “%s” → “%s”"):format(label, change.old or "", change.new or ""))
    else
      print(("%s: %s changed"):format(label, WHAT[change.field] or change.field))
    end
    if not done[id] then
      done[id] = true
      if not core.get_field(id, CALLS, "changed_after_publish") then
        core.set_field(id, CALLS, "changed_after_publish", true)
      end
    end
  end
end
