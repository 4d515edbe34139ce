// What a table's view shows (spec 05 §4 "Search, filter, sort"; J8 stack mode): which records,
// in which order, with which columns. Pure functions over the records the engine sent and the
// user's view settings (GET /views/settings): no DOM, no requests, so they run under Node too
// (tests/js/). The engine stays the source of truth; this only decides what is on screen.

import { displayText, kindOf, choicesOf } from "./format.js";

/** Filter operators per field kind, in menu order. `value` says what the value input is. */
export const OPS_BY_KIND = {
  text: [
    { op: "contains", label: "contains", value: "text" },
    { op: "is", label: "is", value: "text" },
    { op: "empty", label: "is empty", value: null },
    { op: "not_empty", label: "is not empty", value: null },
  ],
  number: [
    { op: "eq", label: "=", value: "number" },
    { op: "ne", label: "≠", value: "number" },
    { op: "lt", label: "<", value: "number" },
    { op: "le", label: "≤", value: "number" },
    { op: "gt", label: ">", value: "number" },
    { op: "ge", label: "≥", value: "number" },
    { op: "empty", label: "is empty", value: null },
    { op: "not_empty", label: "is not empty", value: null },
  ],
  date: [
    { op: "is", label: "is on", value: "date" },
    { op: "before", label: "is before", value: "date" },
    { op: "after", label: "is after", value: "date" },
    { op: "empty", label: "is empty", value: null },
    { op: "not_empty", label: "is not empty", value: null },
  ],
  boolean: [
    { op: "checked", label: "is checked", value: null },
    { op: "unchecked", label: "is not checked", value: null },
  ],
  choice: [
    { op: "any_of", label: "is any of", value: "choices" },
    { op: "empty", label: "is empty", value: null },
    { op: "not_empty", label: "is not empty", value: null },
  ],
  link: [
    { op: "links_to", label: "links to", value: "text" },
    { op: "empty", label: "is empty", value: null },
    { op: "not_empty", label: "is not empty", value: null },
  ],
  file: [
    { op: "has_file", label: "has a file", value: null },
    { op: "no_file", label: "has no file", value: null },
  ],
};

/** The filter family of a field: text, number, date, boolean, choice, link or file. */
export function filterKind(field) {
  switch (field.type) {
    case "integer": case "float": case "duration": return "number";
    case "date": case "datetime": return "date";
    case "boolean": return "boolean";
    case "enum": return "choice";
    case "entity_ref": return "link";
    case "blob_ref": return "file";
    default: return "text";
  }
}

export function opsFor(field) {
  return OPS_BY_KIND[filterKind(field)];
}

export function defaultSettings() {
  return { columns: [], sort: [], filters: [], search: "", stack: null };
}

/** Every field of the table as a column [{name, width?, hidden, field}], in the user's order:
 * the saved columns that still exist, then fields the settings do not mention (new ones). */
export function allColumns(table, settings) {
  const byName = new Map(table.fields.map((f) => [f.name, f]));
  const out = [];
  const seen = new Set();
  for (const c of (settings && settings.columns) || []) {
    const f = byName.get(c.name);
    if (!f || seen.has(c.name)) continue; // a field not here (yet): kept in settings, unused
    seen.add(c.name);
    const col = { name: c.name, hidden: !!c.hidden, field: f };
    if (c.width) col.width = c.width;
    out.push(col);
  }
  for (const f of table.fields) {
    if (!seen.has(f.name)) out.push({ name: f.name, hidden: false, field: f });
  }
  return out;
}

/** The columns shown, for grid.setView: [{name, width?}]. */
export function visibleColumns(table, settings) {
  return allColumns(table, settings).filter((c) => !c.hidden).map((c) => {
    const o = { name: c.name };
    if (c.width) o.width = c.width;
    return o;
  });
}

/** A value as the grid shows it (links by their record's name). */
export function cellText(field, v, labelOf) {
  if (v === null || v === undefined) return "";
  if (field.type === "entity_ref") return (labelOf && labelOf(v)) || "";
  return displayText(field, v);
}

// record -> field name -> its displayed text, lower-cased (search runs on every keystroke;
// records are replaced, never mutated, when they change, so the cache follows them)
const searchCache = new WeakMap();

function searchText(rec, field, v, labelOf) {
  // link and file names may arrive later: not cached
  if (field.type === "entity_ref" || field.type === "blob_ref") {
    return lower(cellText(field, v, labelOf));
  }
  let m = searchCache.get(rec);
  if (!m) {
    m = new Map();
    searchCache.set(rec, m);
  }
  const key = `${field.type}|${field.name}`;
  let t = m.get(key);
  if (t === undefined) {
    t = lower(cellText(field, v, labelOf));
    m.set(key, t);
  }
  return t;
}

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
const lower = (s) => String(s).toLocaleLowerCase();
const isEmpty = (v) => v === null || v === undefined || v === "" ||
  (Array.isArray(v) && v.length === 0);
const pad = (n) => String(n).padStart(2, "0");

/** A date field's value as YYYY-MM-DD (datetimes in the viewer's time zone, as shown). */
function dayOf(field, v) {
  if (field.type === "datetime") {
    const d = new Date(v);
    if (Number.isNaN(d.getTime())) return null;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }
  return typeof v === "string" ? v : null;
}

/** A predicate for one filter row, or null when it cannot apply (unknown field or operator,
 * or a value still missing while the user is filling the row in). */
export function filterPredicate(table, filter, labelOf) {
  const field = table.fields.find((f) => f.name === filter.field);
  if (!field) return null;
  const kind = filterKind(field);
  const spec = OPS_BY_KIND[kind].find((o) => o.op === filter.op);
  if (!spec) return null;
  const want = filter.value;
  if (spec.value && spec.value !== "choices" && (want === undefined || want === null ||
    want === "")) return null;
  const name = field.name;
  const val = (r) => r.values[name];
  switch (filter.op) {
    case "empty": return (r) => isEmpty(val(r));
    case "not_empty": return (r) => !isEmpty(val(r));
    case "checked": return (r) => val(r) === true;
    case "unchecked": return (r) => val(r) !== true;
    case "has_file": return (r) => !isEmpty(val(r));
    case "no_file": return (r) => isEmpty(val(r));
    case "any_of": {
      const set = new Set(Array.isArray(want) ? want.map(String) : []);
      if (!set.size) return null;
      return (r) => !isEmpty(val(r)) && set.has(String(val(r)));
    }
    case "links_to": {
      const w = lower(want);
      return (r) => !isEmpty(val(r)) && lower(cellText(field, val(r), labelOf)).includes(w);
    }
    default: break;
  }
  if (kind === "text") {
    const w = lower(want);
    if (filter.op === "contains") return (r) => lower(val(r) ?? "").includes(w);
    return (r) => lower(String(val(r) ?? "").trim()) === lower(String(want).trim());
  }
  if (kind === "number") {
    const n = Number(want);
    if (!Number.isFinite(n)) return null;
    const cmp = {
      eq: (x) => x === n, ne: (x) => x !== n, lt: (x) => x < n, le: (x) => x <= n,
      gt: (x) => x > n, ge: (x) => x >= n,
    }[filter.op];
    return (r) => {
      const x = val(r);
      if (typeof x !== "number") return filter.op === "ne"; // empty differs from any number
      return cmp(x);
    };
  }
  if (kind === "date") {
    const w = String(want);
    const cmp = { is: (d) => d === w, before: (d) => d < w, after: (d) => d > w }[filter.op];
    return (r) => {
      const x = val(r);
      if (isEmpty(x)) return false;
      const d = dayOf(field, x);
      return d !== null && cmp(d);
    };
  }
  return null;
}

/** A sort key for one value, compared by compareKeys: null sorts last in both directions. */
function sortKey(field, v, labelOf) {
  if (isEmpty(v)) return null;
  switch (field.type) {
    case "integer": case "float": case "duration": case "datetime":
      return typeof v === "number" ? v : null;
    case "boolean": return v ? 1 : 0;
    case "date": return String(v); // YYYY-MM-DD sorts chronologically as text
    default: {
      const s = cellText(field, v, labelOf);
      return s === "" ? null : s;
    }
  }
}

function compareKeys(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return collator.compare(String(a), String(b));
}

/**
 * Which records the view shows, in display order.
 * @param records   every record of the table (the shape of /records/list items)
 * @param table     the table definition ({fields})
 * @param settings  the view settings ({columns, sort, filters, search, stack})
 * @param helpers   {labelOf(id): linked record's name | null,
 *                   stackOrder: record ids of the stack in edge order (stack mode) | null}
 * @returns {ids, total, sortIgnored}: total counts the records before search and filters
 *   (the stack's members in stack mode); sortIgnored is true when a sort is set but the
 *   stack's own order is shown instead.
 */
export function applyView(records, table, settings, helpers = {}) {
  const s = settings || defaultSettings();
  const labelOf = helpers.labelOf || (() => null);
  let rows = records;
  const stacked = !!(s.stack && Array.isArray(helpers.stackOrder));
  if (stacked) {
    const byId = new Map(records.map((r) => [r.id, r]));
    rows = [];
    const seen = new Set();
    for (const id of helpers.stackOrder) {
      const r = byId.get(id);
      if (r && !seen.has(id)) {
        seen.add(id);
        rows.push(r);
      }
    }
  }
  const total = rows.length;

  const preds = (s.filters || []).map((f) => filterPredicate(table, f, labelOf))
    .filter(Boolean);
  const q = lower((s.search || "").trim());
  const shown = q ? allColumns(table, s).filter((c) => !c.hidden).map((c) => c.field) : [];
  const matches = (r) => {
    for (const p of preds) if (!p(r)) return false;
    if (!q) return true;
    for (const f of shown) {
      const v = r.values[f.name];
      if (isEmpty(v)) continue;
      if (searchText(r, f, v, labelOf).includes(q)) return true;
    }
    return false;
  };
  rows = rows.filter(matches);

  const levels = (s.sort || []).map((l) => ({
    field: table.fields.find((f) => f.name === l.field), desc: l.dir === "desc",
  })).filter((l) => l.field);
  const sortIgnored = stacked && levels.length > 0;
  if (levels.length && !stacked) {
    const keyed = rows.map((r, i) => ({
      r, i, keys: levels.map((l) => sortKey(l.field, r.values[l.field.name], labelOf)),
    }));
    keyed.sort((a, b) => {
      for (let k = 0; k < levels.length; k++) {
        const x = a.keys[k];
        const y = b.keys[k];
        if (x === null && y === null) continue;
        if (x === null) return 1; // empties last, whatever the direction
        if (y === null) return -1;
        const c = compareKeys(x, y);
        if (c) return levels[k].desc ? -c : c;
      }
      return a.i - b.i;
    });
    rows = keyed.map((x) => x.r);
  }
  return { ids: rows.map((r) => r.id), total, sortIgnored };
}

/** "312 of 1,204 records" (or "1,204 records" when nothing is filtered out). */
export function countText(shown, total, noun = ["record", "records"]) {
  const fmt = (n) => n.toLocaleString("en-US");
  const word = total === 1 ? noun[0] : noun[1];
  return shown === total ? `${fmt(total)} ${word}` : `${fmt(shown)} of ${fmt(total)} ${word}`;
}

/** Whether the settings narrow the rows (search or a filter that applies). */
export function isFiltered(table, settings, labelOf) {
  if ((settings.search || "").trim()) return true;
  return (settings.filters || []).some((f) => filterPredicate(table, f, labelOf));
}

export { kindOf, choicesOf };
