-- Renumber cues: give the cues of one cue list new numbers in stack order (the order of the
-- ordered "In cue list" links), from `start` in steps of `step` (1, 2, 3 … or 10, 20, 30 …;
-- decimals work too: 0.5 steps give 1, 1.5, 2 …). Called cues also get the new number in the
-- SM cue list. Cues already carrying their new number are left alone.
--
-- args.cue_list  the list's name (case and surrounding spaces don't matter)
-- args.start     the first cue's number
-- args.step      how much each following cue adds (more than 0)

local LISTS = "lighting_cues.CueLists"
local CUES = "lighting_cues.Cues"
local SM = "lighting_cues.SMCues"
local STACK = "lighting_cues.cue_stack"

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- 12 -> "12", 12.5 -> "12.5", 0.1 * 3 -> "0.3" (three decimals at most)
local function cue_number(n)
  local s = string.format("%.3f", n):gsub("0+$", ""):gsub("%.$", "")
  if s == "-0" then s = "0" end
  return s
end

local function member(id, table_id)
  for _, t in ipairs(core.tables_of(id)) do
    if t == table_id then return true end
  end
  return false
end

if args.step <= 0 then
  error("The step must be more than 0 (for example 1 or 10).", 0)
end
if args.start < 0 then
  error("The first number can't be below 0.", 0)
end

-- the list, by name
local wanted = trim(args.cue_list):lower()
local list, names = nil, {}
for _, id in ipairs(core.query({ table = LISTS, order_by = { { field = "name" } } })) do
  local name = core.get_field(id, LISTS, "name") or ""
  names[#names + 1] = name
  if trim(name):lower() == wanted then
    if list ~= nil then
      error(("There are several cue lists named “%s”: rename one first."):format(args.cue_list), 0)
    end
    list = id
  end
end
if list == nil then
  if #names == 0 then
    error("There are no cue lists yet: add one in Cue lists first.", 0)
  end
  error(("No cue list is named “%s”. Cue lists: %s."):format(args.cue_list,
    table.concat(names, ", ")), 0)
end
local list_name = core.get_field(list, LISTS, "name")

-- the stack, in order (index, then link id: the engine's order)
local stack = core.edges(list, { type = STACK, dir = "in" })
table.sort(stack, function(a, b)
  if a.index ~= b.index then return (a.index or "") < (b.index or "") end
  return a.id < b.id
end)

local n, changed = 0, 0
for _, link in ipairs(stack) do
  local cue = link.source
  if core.exists(cue) and member(cue, CUES) then
    local new = cue_number(args.start + n * args.step)
    n = n + 1
    local old = core.get_field(cue, CUES, "number")
    if old ~= new then
      core.set_field(cue, CUES, "number", new)
      changed = changed + 1
      print(("Cue %s → %s"):format(old or "(no number)", new))
    end
    if member(cue, SM) and core.get_field(cue, SM, "number") ~= new then
      core.set_field(cue, SM, "number", new)
    end
  end
end

if n == 0 then
  print(("“%s” has no cues yet: nothing to renumber."):format(list_name))
else
  print(("%s: %d of %d cues renumbered (%s to %s)."):format(list_name, changed, n,
    cue_number(args.start), cue_number(args.start + (n - 1) * args.step)))
end
