-- Generate calls: one Call per active crew member for a day, at one call time and place,
-- named after the person and linked to their Crew record ("For", with their role for the
-- day). Running it again for the same day skips whoever already has a call that day, so new
-- crew can be added later. Everything is staged for review.
--
-- args.day        the day of the calls
-- args.call_time  when they are called
-- args.location   where

local CREW = "crew_calls.Crew"
local CALLS = "crew_calls.Calls"
local FOR = "crew_calls.for_person"

local function member(id, table_id)
  for _, t in ipairs(core.tables_of(id)) do
    if t == table_id then return true end
  end
  return false
end

-- whether `person` already has a call on `day`
local function called(person, day)
  for _, link in ipairs(core.edges(person, { type = FOR, dir = "in" })) do
    local call = link.source
    if core.exists(call) and member(call, CALLS)
        and core.get_field(call, CALLS, "day") == day then
      return true
    end
  end
  return false
end

local crew = core.query({ table = CREW, where = { field = "active", op = "eq", value = true },
  order_by = { { field = "name" } } })
if #crew == 0 then
  print("No active crew: tick Active on the crew members to call.")
  return
end

local made, already = 0, 0
for _, person in ipairs(crew) do
  local p = core.get_record(person, CREW)
  local name = p.name or "(no name)"
  if called(person, args.day) then
    already = already + 1
    print(("%s already has a call on %s: skipped."):format(name, args.day))
  else
    local call = core.create_entity(CALLS, { label = name, day = args.day,
      call_time = args.call_time, location = args.location })
    core.create_edge(FOR, call, person, { role_today = p.role })
    made = made + 1
  end
end
print(("%d calls for %s at %s; %d already called."):format(made, args.day, args.location,
  already))
