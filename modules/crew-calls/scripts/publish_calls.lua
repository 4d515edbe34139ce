-- Publish a day's calls: mark every call of the day as published, and clear "Changed after
-- publish" on those that had it (they are being sent again). Once published, moving a call
-- marks it again (see flag_changed_calls, when switched on).
--
-- args.day  the day to publish

local CALLS = "crew_calls.Calls"

local calls = core.query({ table = CALLS, where = { field = "day", op = "eq", value = args.day },
  order_by = { { field = "call_time" }, { field = "label" } } })
if #calls == 0 then
  print(("No calls on %s: nothing to publish."):format(args.day))
  return
end
local newly, again = 0, 0
for _, id in ipairs(calls) do
  local c = core.get_record(id, CALLS)
  if c.published then
    if c.changed_after_publish then
      again = again + 1
      print(("%s: changed since it was published, published again."):format(c.label))
    end
  else
    newly = newly + 1
  end
  core.set_field(id, CALLS, "published", true)
  core.set_field(id, CALLS, "changed_after_publish", false)
end
print(("%s: %d calls published, %d published again."):format(args.day, newly, again))
