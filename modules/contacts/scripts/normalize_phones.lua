-- Normalise phone numbers: rewrite every person's phone number in one international format,
-- "+" then the country code and the number without spaces (+441632960123), which every phone
-- dials and every peer sorts the same way.
--
-- Numbers written with "+" or "00" keep their own country code; other numbers are read as
-- national numbers of `country_code` (a leading 0 trunk prefix is dropped: 01632 960123 with
-- country code 44 becomes +441632960123). Spaces, dots, dashes, slashes, brackets and a "(0)"
-- are ignored. Anything else (letters, extensions such as "x12", too few or too many digits)
-- is left as it is and named in the log, for a person to fix.
--
-- args.country_code  e.g. 44 or +1

local PEOPLE = "contacts.People"

local cc = args.country_code:gsub("[%s%+]", "")
if not cc:match("^[1-9]%d?%d?$") then
  error(("The country code “%s” is not 1 to 3 digits (for example 44 or +1)."):format(
    args.country_code), 0)
end

-- "+441632960123", or nil when the text is not a phone number this can read
local function normalise(raw)
  local s = raw:gsub("%(0%)", "")
  s = s:gsub("[%s%.%-/()]", "")
  local plus = s:sub(1, 1) == "+"
  if plus then s = s:sub(2) end
  if s == "" or s:find("%D") then return nil end
  local digits
  if plus then
    digits = s
  elseif s:sub(1, 2) == "00" then
    digits = s:sub(3)
  elseif s:sub(1, 1) == "0" then
    digits = cc .. s:sub(2)
  else
    digits = cc .. s
  end
  -- E.164: at most 15 digits; fewer than 8 is no real number with its country code
  if #digits < 8 or #digits > 15 or digits:sub(1, 1) == "0" then return nil end
  return "+" .. digits
end

local people = core.query({ table = PEOPLE, where = { field = "phone", op = "not_empty" },
  order_by = { { field = "full_name" } } })
local fixed, fine, skipped = 0, 0, 0
for _, id in ipairs(people) do
  local rec = core.get_record(id, PEOPLE)
  local name = rec.full_name or "(no name)"
  local phone = rec.phone
  local tidy = normalise(phone)
  if tidy == nil then
    skipped = skipped + 1
    core.log("warn", ("Skipped %s: “%s” is not a phone number this can read."):format(name, phone))
  elseif tidy == phone then
    fine = fine + 1
  else
    core.set_field(id, PEOPLE, "phone", tidy)
    fixed = fixed + 1
    print(("%s: %s → %s"):format(name, phone, tidy))
  end
end
print(("%d numbers normalised, %d already fine, %d skipped."):format(fixed, fine, skipped))
