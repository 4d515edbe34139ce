// Unit tests of web/viewstate.js (run with `node --test tests/js/`; tests/unit/test_js_viewstate.py
// runs them under pytest).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  applyView, allColumns, visibleColumns, countText, filterPredicate, opsFor, isFiltered,
} from "../../web/viewstate.js";

const TABLE = {
  id: "show.Cues",
  fields: [
    { name: "number", label: "Cue", type: "text" },
    { name: "time", label: "Time", type: "duration" },
    { name: "page", label: "Page", type: "integer" },
    { name: "day", label: "Day", type: "date" },
    { name: "at", label: "At", type: "datetime" },
    { name: "called", label: "Called", type: "boolean" },
    { name: "kind", label: "Kind", type: "enum",
      options: { choices: [["go", "Go"], ["sb", "Standby"]] } },
    { name: "who", label: "Who", type: "entity_ref" },
    { name: "plot", label: "Plot", type: "blob_ref" },
    { name: "notes", label: "Notes", type: "text", crdt: true },
  ],
};
const NAMES = { p1: "Alex Smith", p2: "Jordan" };
const labelOf = (id) => NAMES[id] || null;

const rec = (id, values) => ({ id, values });
const RECORDS = [
  rec("a", { number: "Cue 10", time: 90000, page: 12, day: "2024-05-01", called: true,
    kind: "go", who: "p1", notes: "Fade slowly" }),
  rec("b", { number: "Cue 2", time: 5000, page: 3, day: "2024-04-30", called: false,
    kind: "sb", plot: "f".repeat(64) }),
  rec("c", { number: "cue 1", time: null, page: 12, day: null, called: null, kind: null,
    who: "p2" }),
  rec("d", { number: "Blackout", time: 30000, page: null, day: "2024-05-02", kind: "go" }),
  rec("e", { number: null, time: 1000, page: 7 }),
];
const S = (o) => ({ columns: [], sort: [], filters: [], search: "", stack: null, ...o });
const ids = (o, h = {}) => applyView(RECORDS, TABLE, S(o), { labelOf, ...h }).ids;

test("no settings: every record in the order given", () => {
  const r = applyView(RECORDS, TABLE, S({}), { labelOf });
  assert.deepEqual(r.ids, ["a", "b", "c", "d", "e"]);
  assert.equal(r.total, 5);
  assert.equal(r.sortIgnored, false);
});

test("quick search is case-insensitive over displayed text", () => {
  assert.deepEqual(ids({ search: "CUE" }), ["a", "b", "c"]);
  assert.deepEqual(ids({ search: "alex" }), ["a"], "link names");
  assert.deepEqual(ids({ search: "standby" }), ["b"], "choice labels");
  assert.deepEqual(ids({ search: "0:01:30" }), ["a"], "durations as shown");
  assert.deepEqual(ids({ search: "fade" }), ["a"], "long text");
  assert.deepEqual(ids({ search: "  zzz " }), []);
  const r = applyView(RECORDS, TABLE, S({ search: "cue" }), { labelOf });
  assert.equal(r.total, 5);
});

test("search skips hidden columns", () => {
  assert.deepEqual(ids({ search: "alex", columns: [{ name: "who", hidden: true }] }), []);
});

test("text filters", () => {
  const f = (op, value) => ids({ filters: [{ field: "number", op, value }] });
  assert.deepEqual(f("contains", "cue"), ["a", "b", "c"]);
  assert.deepEqual(f("is", "blackout"), ["d"]);
  assert.deepEqual(f("empty"), ["e"]);
  assert.deepEqual(f("not_empty"), ["a", "b", "c", "d"]);
  assert.deepEqual(f("contains", ""), ["a", "b", "c", "d", "e"], "no value yet: no filter");
});

test("number and duration filters", () => {
  const f = (field, op, value) => ids({ filters: [{ field, op, value }] });
  assert.deepEqual(f("page", "eq", 12), ["a", "c"]);
  assert.deepEqual(f("page", "ne", 12), ["b", "d", "e"]);
  assert.deepEqual(f("page", "lt", 7), ["b"]);
  assert.deepEqual(f("page", "le", 7), ["b", "e"]);
  assert.deepEqual(f("page", "gt", 7), ["a", "c"]);
  assert.deepEqual(f("page", "ge", 7), ["a", "c", "e"]);
  assert.deepEqual(f("page", "empty"), ["d"]);
  assert.deepEqual(f("time", "ge", 30000), ["a", "d"]);
});

test("date filters (datetimes by their local day)", () => {
  const f = (op, value) => ids({ filters: [{ field: "day", op, value }] });
  assert.deepEqual(f("is", "2024-05-01"), ["a"]);
  assert.deepEqual(f("before", "2024-05-01"), ["b"]);
  assert.deepEqual(f("after", "2024-05-01"), ["d"]);
  assert.deepEqual(f("empty"), ["c", "e"]);
  const at = new Date(2024, 4, 1, 23, 30).getTime();
  const recs = [rec("x", { at }), rec("y", { at: at + 3600000 })];
  const r = applyView(recs, TABLE, S({ filters: [{ field: "at", op: "is", value: "2024-05-01" }] }));
  assert.deepEqual(r.ids, ["x"]);
});

test("boolean, choice, link and file filters", () => {
  const f = (field, op, value) => ids({ filters: [{ field, op, value }] });
  assert.deepEqual(f("called", "checked"), ["a"]);
  assert.deepEqual(f("called", "unchecked"), ["b", "c", "d", "e"]);
  assert.deepEqual(f("kind", "any_of", ["go"]), ["a", "d"]);
  assert.deepEqual(f("kind", "any_of", ["go", "sb"]), ["a", "b", "d"]);
  assert.deepEqual(f("kind", "any_of", []), ["a", "b", "c", "d", "e"]);
  assert.deepEqual(f("kind", "empty"), ["c", "e"]);
  assert.deepEqual(f("who", "links_to", "JORD"), ["c"]);
  assert.deepEqual(f("who", "empty"), ["b", "d", "e"]);
  assert.deepEqual(f("plot", "has_file"), ["b"]);
  assert.deepEqual(f("plot", "no_file"), ["a", "c", "d", "e"]);
});

test("filters combine; unknown fields and wrong operators are ignored", () => {
  assert.deepEqual(ids({ filters: [{ field: "page", op: "eq", value: 12 },
    { field: "number", op: "contains", value: "10" }] }), ["a"]);
  assert.deepEqual(ids({ filters: [{ field: "later", op: "eq", value: 1 }] }).length, 5);
  assert.deepEqual(ids({ filters: [{ field: "called", op: "contains", value: "x" }] }).length, 5);
  assert.equal(filterPredicate(TABLE, { field: "later", op: "empty" }), null);
  assert.equal(isFiltered(TABLE, S({ filters: [{ field: "later", op: "empty" }] })), false);
  assert.equal(isFiltered(TABLE, S({ search: "x" })), true);
});

test("text sorts locale-aware with numbers in order, empties last", () => {
  assert.deepEqual(ids({ sort: [{ field: "number", dir: "asc" }] }), ["d", "c", "b", "a", "e"]);
  assert.deepEqual(ids({ sort: [{ field: "number", dir: "desc" }] }), ["a", "b", "c", "d", "e"]);
});

test("numbers, durations and dates sort by value; multi-level and stable", () => {
  assert.deepEqual(ids({ sort: [{ field: "time", dir: "asc" }] }), ["e", "b", "d", "a", "c"]);
  assert.deepEqual(ids({ sort: [{ field: "day", dir: "desc" }] }), ["d", "a", "b", "c", "e"]);
  // page asc (empties last), then Cue desc within equal pages
  assert.deepEqual(ids({ sort: [{ field: "page", dir: "asc" }, { field: "number", dir: "desc" }] }),
    ["b", "e", "a", "c", "d"]);
  // equal keys keep the given order
  assert.deepEqual(ids({ sort: [{ field: "kind", dir: "asc" }] }), ["a", "d", "b", "c", "e"]);
  assert.deepEqual(ids({ sort: [{ field: "who", dir: "asc" }] }), ["a", "c", "b", "d", "e"]);
  assert.deepEqual(ids({ sort: [{ field: "later", dir: "asc" }] }), ["a", "b", "c", "d", "e"]);
});

test("stack mode: members only, in edge order; sort ignored; filters still apply", () => {
  const stack = { edge_type: "show.stack", parent: "L" };
  const r = applyView(RECORDS, TABLE, S({ stack, sort: [{ field: "number", dir: "asc" }] }),
    { labelOf, stackOrder: ["d", "a", "zz", "b", "a"] });
  assert.deepEqual(r.ids, ["d", "a", "b"]);
  assert.equal(r.total, 3);
  assert.equal(r.sortIgnored, true);
  const f = applyView(RECORDS, TABLE, S({ stack, search: "cue" }), { stackOrder: ["d", "a", "b"] });
  assert.deepEqual(f.ids, ["a", "b"]);
  assert.equal(f.sortIgnored, false);
  // stack settings without the order yet: everything, as if not stacked
  assert.deepEqual(applyView(RECORDS, TABLE, S({ stack })).ids.length, 5);
});

test("columns: saved order and widths, hidden ones, new and unknown fields", () => {
  const settings = S({ columns: [{ name: "page", width: 80 }, { name: "gone", width: 50 },
    { name: "number", hidden: true }] });
  const all = allColumns(TABLE, settings);
  assert.deepEqual(all.map((c) => c.name).slice(0, 3), ["page", "number", "time"]);
  assert.equal(all.length, TABLE.fields.length);
  const vis = visibleColumns(TABLE, settings);
  assert.deepEqual(vis[0], { name: "page", width: 80 });
  assert.ok(!vis.some((c) => c.name === "number" || c.name === "gone"));
  assert.equal(vis.length, TABLE.fields.length - 1);
});

test("row counts and operator menus", () => {
  assert.equal(countText(312, 1204), "312 of 1,204 records");
  assert.equal(countText(1204, 1204), "1,204 records");
  assert.equal(countText(1, 1), "1 record");
  assert.equal(countText(0, 1), "0 of 1 record");
  assert.deepEqual(opsFor(TABLE.fields[2]).map((o) => o.label), ["=", "≠", "<", "≤", ">", "≥",
    "is empty", "is not empty"]);
  assert.deepEqual(opsFor(TABLE.fields[8]).map((o) => o.op), ["has_file", "no_file"]);
});
