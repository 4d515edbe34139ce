// The app shell: state, sidebar, top bar, and the wiring between the API, the event stream and
// the grid. The browser holds no business logic (spec 05 §1): it asks the engine, shows the
// answer, and re-asks when an event says something changed.

import * as api from "./api.js";
import { EventStream } from "./events.js";
import { Grid, isMac } from "./grid.js";
import { askText, newTableDialog } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { hydrateIcons, icon } from "./icons.js";
import { shortId } from "./format.js";
import { Conflicts } from "./conflicts.js";
import { Staging } from "./staging.js";
import { Sync } from "./sync.js";
import { Modules } from "./modules.js";
import { Rules } from "./rules.js";
import { Scripts } from "./scripts.js";
import { Files } from "./files.js";
import { applyView, countText, defaultSettings, visibleColumns, allColumns } from "./viewstate.js";
import { ViewBar } from "./viewbar.js";
import { Inspector } from "./inspector.js";
import { mountShell } from "./welcome.js";
import { Print } from "./print.js";
import { Csv } from "./csv.js";

const $ = (id) => document.getElementById(id);

const state = {
  ws: null, // GET /workspace/current
  tables: [],
  tableId: null,
  records: [],
  byId: new Map(), // record id -> record of `records`
  recordsSeq: 0,
  tablesSeq: 0,
  selection: [],
  blocked: false,
  view: null, // name of the module view shown instead of the grid, or null
};

// The open table's view (spec 05 §4; J8): the user's settings, and in stack mode the stack's
// members in edge order with their edge ids (for /edges/reorder).
const view = {
  tableId: null,
  settings: defaultSettings(),
  stacks: [], // [{edge_type, label, parent_table}] this table can be shown as
  stackOrder: null, // record ids of the stack in order, once loaded
  stackEdges: new Map(), // record id -> its edge id in the stack
  ids: [], // record ids shown, in display order
};

const recordsByTable = new Map(); // table id -> Promise<records> (link pickers and labels)
const labels = new Map(); // record id -> label, for linked records outside loaded tables
const labelRequests = new Set();

// --- small helpers ------------------------------------------------------------------------

/** Commands run one at a time, in the order the user made them. */
let chain = Promise.resolve();
function command(fn) {
  const p = chain.then(fn);
  chain = p.catch(() => {});
  return p;
}

/** fetcher(seq) at most once at a time; calls made meanwhile share one follow-up run. */
function coalesce(fetcher) {
  let inflight = null;
  let queued = null;
  let queuedSeq = 0;
  const run = (seq) => {
    inflight = fetcher(seq).finally(() => { inflight = null; });
    return inflight;
  };
  return (seq = 0) => {
    if (!inflight) return run(seq);
    queuedSeq = Math.max(queuedSeq, seq || 0);
    if (!queued) {
      queued = inflight.catch(() => {}).then(() => {
        const s = queuedSeq;
        queued = null;
        queuedSeq = 0;
        return run(s);
      });
    }
    return queued;
  };
}

function tableById(id) {
  return state.tables.find((t) => t.id === id) || null;
}

function recordLabel(table, rec) {
  if (table) {
    for (const f of table.fields) {
      const v = rec.values[f.name];
      if (f.type === "text" && typeof v === "string" && v.trim()) return v.trim().split("\n")[0];
    }
  }
  return `Record …${shortId(rec.id)}`;
}

function reportError(err, what) {
  if (err && err.code === "unauthorized") return;
  toast(`${what}: ${err.message || err}`, { kind: "error", timeout: 10000 });
}

const mod = isMac() ? "⌘" : "Ctrl+";
const redoKeys = isMac() ? "⇧⌘Z" : "Ctrl+Shift+Z or Ctrl+Y";

// --- conflicts and staging ----------------------------------------------------------------

/** A record's person-readable name (its first text value), fetched when not on screen. */
async function recordName(entityId, tableId) {
  const here = state.byId.get(entityId);
  if (here) return recordLabel(tableById(state.tableId), here);
  if (labels.get(entityId)) return labels.get(entityId);
  try {
    const rec = await api.get(`/records/${encodeURIComponent(entityId)}`);
    const t = tableById(tableId) || tableById((rec.tables || [])[0] || rec.table);
    const name = recordLabel(t, rec);
    labels.set(entityId, name);
    return name;
  } catch {
    return `Record …${shortId(entityId)}`;
  }
}

const ctx = {
  tableById,
  recordName,
  knownName: (id) => labels.get(id) || null,
  reportError,
  flushEdit: () => grid.flushEdit(),
  async afterWrite(seq) {
    await Promise.all([refreshRecords(seq || 0), refreshWorkspace()]);
  },
};
const conflicts = new Conflicts(ctx);
const staging = new Staging(ctx);
const sync = new Sync({
  reportError,
  workspace: () => state.ws,
  reload: () => {
    state.tableId = null;
    reloadAll().catch((e) => reportError(e, "Couldn't load the workspace"));
  },
});

const modules = new Modules({
  reportError,
  afterAdopt: (seq) => Promise.all([refreshTables(seq), rules.refresh().catch(() => {})]),
  viewsChanged: () => renderViewTabs(),
  // J4: an adopted module's entry says which rules it offers, with a way to the Rules panel
  decorate: (m, li) => rules.decorateModule(m, li),
});

const rules = new Rules({
  reportError,
  afterWrite: (seq) => ctx.afterWrite(seq),
  moduleName: (id) => (modules.modules.find((m) => m.id === id) || {}).name || null,
  overlayName: (id) => (staging.overlays.find((o) => o.id === id) || {}).name || null,
  refreshOverlays: () => staging.refresh(),
  offersChanged: () => { if (modules.panel) modules.renderPanel(); },
});

const scripts = new Scripts({
  reportError,
  afterWrite: (seq) => ctx.afterWrite(seq),
  tableById,
  tables: () => state.tables,
  recordName,
  moduleName: (id) => (modules.modules.find((m) => m.id === id) || {}).name || null,
  ruleLabel: (id) => rules.labelOf(id),
  // rule ids named by an engine error may be newer than the Rules panel's list
  reloadRules: () => rules.loadRules(),
  refreshOverlays: () => staging.refresh(),
  // J14: Review in staging activates the script's overlay (stashing the user's own, if asked)
  async openInStaging(id) {
    await staging.refresh();
    const o = staging.overlays.find((x) => x.id === id);
    if (o) await staging.activate(o);
  },
});

// J9: file cells (uploads, thumbnails, previews, files still on a teammate's device)
const files = new Files({
  attach: (id, field, hash) => grid.sendEdit(id, field, hash),
  fail: (id, field, message) => grid.fail(id, field, message),
  rerender: (id, field) => grid.rerender(id, field),
  refresh: (hash) => grid.refreshFiles(hash),
  recordName: (id) => grid.recordName(id),
  peerName: (actorId) => sync.names().get(actorId) || null,
  focusGrid: () => grid.focusActive(),
});

// the record inspector: form view, links both ways, attachments, history (spec 05 §2; J6/J7/J9)
const inspector = new Inspector($("inspector-host"), {
  api, toast, announce, files, tableById, recordLabel,
  tables: () => state.tables,
  async commit(updates) {
    const r = await command(() => api.post("/records/update", { updates }));
    await Promise.all([patchRecords(updates.map((u) => u.id), r.seq), refreshWorkspace(),
      r.staged ? staging.refresh() : null]);
    return r;
  },
  refreshAfter: (seq) => ctx.afterWrite(seq).catch(() => {}),
  resolveConflict: (id, field) => conflicts.openForCell(id, field)
    .catch((e) => reportError(e, "Couldn't open the conflict")),
  openDrift: () => staging.openDrift(),
});

// printable paperwork: call sheets and cue sheets with a revision stamp (issue 9)
const printer = new Print({ api, toast, tables: () => state.tables, tableById,
  workspace: () => ({ name: state.ws ? state.ws.name : "" }) });

// CSV in (into a new overlay, for review) and out (the current view or the whole table)
const csv = new Csv({
  api, toast, announce, staging,
  tableId: () => state.tableId,
  table: () => tableById(state.tableId),
  visibleIds: () => grid.visibleIds(),
  columns: () => grid.columns(),
});

// --- module views (spec 04 §1; J4) --------------------------------------------------------

let mountedView = null; // {view, changed(table), unmount()} of the view on screen

function unmountView() {
  if (mountedView) mountedView.unmount();
  mountedView = null;
}

/** The Grid / module-view tabs of the open table (hidden when no adopted module has a view). */
function renderViewTabs() {
  const host = $("view-tabs");
  const views = state.tableId ? modules.viewsFor(state.tableId) : [];
  if (state.view && !views.some((v) => v.name === state.view)) showView(null);
  host.hidden = !views.length;
  host.replaceChildren();
  if (!views.length) return;
  const tab = (name, label, title) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "view-tab";
    b.dataset.view = name || "";
    b.setAttribute("role", "tab");
    b.textContent = label;
    b.title = title;
    const on = (state.view || null) === name;
    b.setAttribute("aria-selected", on ? "true" : "false");
    b.tabIndex = on ? 0 : -1;
    b.addEventListener("click", () => showView(name));
    return b;
  };
  host.append(tab(null, "Grid", "Edit the records in the grid"));
  for (const v of views) {
    host.append(tab(v.name, v.label || v.name, `A view from the ${v.module} module (read-only)`));
  }
}

function showView(name) {
  const view = name ? modules.viewsFor(state.tableId).find((v) => v.name === name) : null;
  if (mountedView && (!view || mountedView.view.name !== view.name ||
    mountedView.view.url !== view.url)) unmountView();
  state.view = view ? view.name : null;
  $("grid-host").hidden = !!view;
  $("module-view-host").hidden = !view;
  $("delete-selected-btn").hidden = !!view;
  $("viewbar").hidden = !!view;
  if (view && !mountedView) {
    grid.flushEdit();
    mountedView = modules.mountView($("module-view-host"), view);
    $("module-view-host").setAttribute("aria-label", view.label || view.name);
  }
  for (const b of $("view-tabs").querySelectorAll(".view-tab")) {
    const on = b.dataset.view === (view ? view.name : "");
    b.setAttribute("aria-selected", on ? "true" : "false");
    b.tabIndex = on ? 0 : -1;
  }
}

// --- the grid and its controller ----------------------------------------------------------

const grid = new Grid($("grid-host"), {
  async commit(id, field, value) {
    const r = await command(() => api.post("/records/update", { id, values: { [field]: value } }));
    await Promise.all([patchRecords([id], r.seq), refreshWorkspace(),
      r.staged ? staging.refresh() : null]);
  },
  /** A rectangular paste: every cell in one change (one undo step). */
  async pasteUpdates(updates) {
    if (!updates.length) return;
    const r = await command(() => api.post("/records/update", { updates }));
    await Promise.all([patchRecords(updates.map((u) => u.id), r.seq), refreshWorkspace(),
      r.staged ? staging.refresh() : null]);
  },
  /** The user resized or reordered columns in the grid: keep it in the view settings. */
  onColumnsChanged(columns) {
    const t = tableById(state.tableId);
    if (!t) return;
    changeView((s) => {
      const hidden = allColumns(t, s).filter((c) => c.hidden)
        .map((c) => (c.width ? { name: c.name, width: c.width, hidden: true }
          : { name: c.name, hidden: true }));
      const shown = columns.map((c) => {
        const o = { name: c.name, hidden: false };
        if (c.width) o.width = Math.min(4000, Math.max(16, Math.round(c.width)));
        return o;
      });
      const names = new Set([...shown, ...hidden].map((c) => c.name));
      s.columns = [...shown, ...hidden, ...(s.columns || []).filter((c) => !names.has(c.name))];
    }, { fromGrid: true });
  },
  /** J8: move a record of the shown stack between its new neighbours (record ids). */
  reorder: (id, where) => reorderInStack(id, where || {}),
  resolveConflict: (id, field) => conflicts.openForCell(id, field)
    .catch((e) => reportError(e, "Couldn't open the conflict")),
  openDrift: () => staging.openDrift(),
  files,
  openRecord: (id) => inspector.open(id),
  lastChange: (id, f) => inspector.lastChange(id, f),
  addRecord: () => addRecord(),
  deleteRecords: (ids, opts) => deleteRecords(ids, opts),
  async linkChoices(field) {
    const target = field.options && field.options.ref_table;
    const tables = target ? [tableById(target)].filter(Boolean) : state.tables;
    const groups = [];
    for (const t of tables) {
      const recs = await recordsOf(t.id);
      groups.push({ label: t.label, items: recs.map((r) => ({ id: r.id, label: recordLabel(t, r) })) });
    }
    return groups;
  },
  linkLabel: (id) => linkLabel(id),
  onRows() {
    // the count ("312 of 1,204 records") is the view's: applyAndShow writes it
  },
  onSelection(ids) {
    state.selection = ids;
    const btn = $("delete-selected-btn");
    btn.disabled = ids.length === 0;
    $("delete-selected-label").textContent = ids.length ? `Delete selected (${ids.length})`
      : "Delete selected";
  },
});

/** A linked record's name (null while it is being fetched). */
function linkLabel(id) {
  const here = state.byId.get(id);
  if (here) return recordLabel(tableById(state.tableId), here);
  if (labels.has(id)) return labels.get(id);
  requestLabel(id);
  return null;
}

function recordsOf(tableId) {
  if (!recordsByTable.has(tableId)) {
    const p = api.get("/records/list", { table: tableId }).then((r) => r.records);
    p.catch(() => recordsByTable.delete(tableId));
    recordsByTable.set(tableId, p);
  }
  return recordsByTable.get(tableId);
}

function requestLabel(id) {
  if (labelRequests.has(id)) return;
  labelRequests.add(id);
  api.get(`/records/${encodeURIComponent(id)}`).then((rec) => {
    const t = tableById((rec.tables || [])[0]);
    labels.set(id, recordLabel(t, rec));
  }).catch(() => {
    labels.set(id, null);
  }).finally(() => {
    labelRequests.delete(id);
    if (labels.get(id)) {
      grid.refreshLinks();
      applySoon(); // a search, filter or sort may use the name
    }
  });
}

// --- loading ------------------------------------------------------------------------------

/** While staging, note each staged cell's real (canonical) value for its tooltip. */
async function withCanonical(tableId, r, ids = null) {
  if (!r.records.some((rec) => (rec.staged || []).length)) return;
  try {
    const c = await api.get("/records/list", { table: tableId, after: r.seq, canonical: 1,
      ids: ids ? ids.join(",") : undefined });
    const byId = new Map(c.records.map((x) => [x.id, x]));
    for (const rec of r.records) {
      if (!(rec.staged || []).length) continue;
      const real = byId.get(rec.id);
      rec._canonical = {};
      for (const name of rec.staged) rec._canonical[name] = real ? real.values[name] ?? null : null;
    }
  } catch {
    // the tooltip just goes without the real value
  }
}

function setRecords(records) {
  state.records = records;
  state.byId = new Map(records.map((r) => [r.id, r]));
}

/** Every record of the open table, again (a reconnect, a schema change, an undo…). */
const refreshRecords = coalesce(async (seq) => {
  const tableId = state.tableId;
  if (!tableId) return;
  const r = await api.get("/records/list", { table: tableId, after: seq || undefined });
  if (tableId !== state.tableId || r.seq < state.recordsSeq) return;
  await withCanonical(tableId, r);
  if (tableId !== state.tableId) return;
  state.recordsSeq = r.seq;
  setRecords(r.records);
  recordsByTable.set(tableId, Promise.resolve(r.records));
  grid.update(r.records);
  applyAndShow();
});

// --- live patches (spec 05 §2 "Events are invalidation hints") -----------------------------

const PATCH_MAX = 200; // more ids than this in one go (a long URL): reload the table instead
const patchQueue = { ids: new Set(), seq: 0 };

/** Re-fetch only these records of the open table and patch them into the grid (ids the engine
 * no longer lists there leave it); resolves once they are on screen. */
function patchRecords(ids, seq = 0) {
  for (const id of ids) patchQueue.ids.add(id);
  patchQueue.seq = Math.max(patchQueue.seq, seq || 0);
  return runPatch();
}

const runPatch = coalesce(async () => {
  const tableId = state.tableId;
  const ids = [...patchQueue.ids];
  const seq = patchQueue.seq;
  patchQueue.ids.clear();
  patchQueue.seq = 0;
  if (!tableId || !ids.length) return;
  if (ids.length > PATCH_MAX) {
    await refreshRecords(seq);
    return;
  }
  const r = await api.get("/records/list", { table: tableId, ids: ids.join(","),
    after: seq || undefined });
  if (tableId !== state.tableId || r.seq < state.recordsSeq) return;
  await withCanonical(tableId, r, ids);
  if (tableId !== state.tableId) return;
  state.recordsSeq = r.seq;
  const got = new Map(r.records.map((x) => [x.id, x]));
  const removed = ids.filter((id) => !got.has(id) && state.byId.has(id));
  const gone = new Set(removed);
  let added = false;
  const next = [];
  for (const rec of state.records) {
    if (got.has(rec.id)) next.push(got.get(rec.id));
    else if (!gone.has(rec.id)) next.push(rec);
  }
  for (const rec of r.records) {
    if (!state.byId.has(rec.id)) {
      next.push(rec);
      added = true;
    }
  }
  // the engine lists records in creation order (by id); new ones go to their place
  if (added) next.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  setRecords(next);
  recordsByTable.set(tableId, Promise.resolve(next));
  grid.patch(r.records, removed);
  applyAndShow();
});

// --- the view: search, filters, sort, columns, stack (spec 05 §4, J8) --------------------------

/** Show the open table through its view settings (the grid keeps selection and editor). */
function applyAndShow() {
  const t = tableById(state.tableId);
  if (!t || view.tableId !== t.id) return;
  const r = applyView(state.records, t, view.settings, {
    labelOf: linkLabel, stackOrder: view.stackOrder,
  });
  $("record-count").textContent = countText(r.ids.length, r.total);
  // a row being edited stays where it was until the edit ends, even if it no longer matches
  const editing = grid.editing && !grid.editing.done ? grid.editing.id : null;
  if (editing && state.byId.has(editing) && !r.ids.includes(editing) &&
    view.ids.includes(editing)) {
    r.ids.splice(Math.min(view.ids.indexOf(editing), r.ids.length), 0, editing);
  }
  view.ids = r.ids;
  const ordered = !!view.settings.stack && !!view.stackOrder;
  grid.setView({ order: r.ids, columns: visibleColumns(t, view.settings), ordered });
  viewbar.setHint(!ordered ? "" : r.sortIgnored
    ? "Sorting is off while a stack is shown in its own order · Alt+↑/↓ moves a row"
    : "Stack order · Alt+↑/↓ moves a row");
}

let applyTimer = null;
function applySoon() {
  if (applyTimer) return;
  applyTimer = setTimeout(() => {
    applyTimer = null;
    applyAndShow();
  }, 80);
}

/** Let fn edit the open table's view settings; show the result and save it (debounced). */
function changeView(fn, { structural = false, fromGrid = false } = {}) {
  if (!view.tableId) return;
  const stackBefore = JSON.stringify(view.settings.stack);
  fn(view.settings);
  let loading = false;
  if (JSON.stringify(view.settings.stack) !== stackBefore) {
    view.stackOrder = null;
    view.stackEdges = new Map();
    if (view.settings.stack) {
      loading = true; // shown once its order is here (no flash of the whole table)
      refreshStack().catch((e) => reportError(e, "Couldn't load the stack"));
    }
  }
  if (!loading && (!fromGrid || structural)) applyAndShow();
  viewbar.render({ refill: structural });
  saveSoon();
}

let saveTimer = null;
let savePending = null; // {table, settings} not saved yet

function saveSoon() {
  savePending = { table: view.tableId, settings: JSON.parse(JSON.stringify(view.settings)) };
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => flushSave(), 400);
}

/** Save the pending view settings now (a table switch, leaving the page). */
function flushSave({ keepalive = false } = {}) {
  clearTimeout(saveTimer);
  const body = savePending;
  savePending = null;
  if (!body) return Promise.resolve();
  if (keepalive) {
    // the page is going away: a plain request might be cancelled with it
    fetch("/views/settings", {
      method: "POST", credentials: "same-origin", keepalive: true,
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    }).catch(() => {});
    return Promise.resolve();
  }
  return api.post("/views/settings", body)
    .catch((e) => reportError(e, "Couldn't save the view settings"));
}

/** The open table's view settings and the stacks it can be shown as. */
async function loadViewSettings(tableId) {
  try {
    const r = await api.get("/views/settings", { table: tableId });
    return { settings: { ...defaultSettings(), ...r.settings }, stacks: r.stacks || [] };
  } catch (e) {
    reportError(e, "Couldn't load the view settings");
    return { settings: defaultSettings(), stacks: [] };
  }
}

/** Only the stacks (after a schema change: an adopted module may bring an ordered link). */
async function refreshStacks() {
  const tableId = view.tableId;
  if (!tableId) return;
  const r = await api.get("/views/settings", { table: tableId });
  if (view.tableId !== tableId) return;
  view.stacks = r.stacks || [];
  viewbar.renderStack();
}

/** J8: the members of the shown stack in order, with their edge ids. */
async function loadStack(seq = 0) {
  const st = view.settings.stack;
  if (!st) {
    view.stackOrder = null;
    view.stackEdges = new Map();
    return;
  }
  const r = await api.get("/edges/list", { entity: st.parent, type: st.edge_type,
    direction: "in", after: seq || undefined });
  if (view.settings.stack !== st) return; // another stack was picked meanwhile
  const edges = r.edges.filter((e) => e.dst === st.parent && e.type === st.edge_type);
  view.stackOrder = edges.map((e) => e.src);
  view.stackEdges = new Map(edges.map((e) => [e.src, e.id]));
}

const refreshStack = coalesce(async (seq) => {
  await loadStack(seq);
  applyAndShow();
});

/** Move record `id` between the records `after` and `before` of the shown stack (J8): the
 * row moves at once, then the engine's order is shown. */
async function reorderInStack(id, { after = null, before = null }) {
  const st = view.settings.stack;
  if (!st) throw new Error("Rows can be moved only while a stack is shown.");
  if (!view.stackEdges.has(id)) await loadStack();
  const edge = view.stackEdges.get(id);
  if (!edge) throw new Error("This record is not in the stack.");
  const body = { id: edge };
  if (after && view.stackEdges.has(after)) body.after = view.stackEdges.get(after);
  if (before && view.stackEdges.has(before)) body.before = view.stackEdges.get(before);
  if (view.stackOrder) {
    const order = view.stackOrder.filter((x) => x !== id);
    let at = body.after ? order.indexOf(after) + 1 : body.before ? order.indexOf(before) : 0;
    if (!body.after && !body.before) at = order.length;
    order.splice(at, 0, id);
    view.stackOrder = order;
    applyAndShow();
  }
  try {
    const r = await command(() => api.post("/edges/reorder", body));
    await refreshStack(r.seq);
    refreshWorkspace().catch(() => {});
  } catch (err) {
    await refreshStack().catch(() => {});
    throw err;
  }
}

/** The records a stack can be shown for (e.g. the cue lists), by name. */
async function stackParents(stack) {
  const t = tableById(stack.parent_table);
  if (!t) return [];
  const recs = await recordsOf(t.id);
  return recs.map((r) => ({ id: r.id, label: recordLabel(t, r) }))
    .sort((a, b) => a.label.localeCompare(b.label, undefined, { numeric: true }));
}

const viewbar = new ViewBar($("viewbar"), {
  table: () => (view.tableId ? tableById(view.tableId) : null),
  settings: () => view.settings,
  change: (fn, opts) => changeView(fn, opts),
  stacks: () => view.stacks,
  stackParents,
  focusGrid: () => grid.focusActive(),
});

const refreshWorkspace = coalesce(async () => {
  const ws = await api.get("/workspace/current");
  state.ws = ws;
  $("ws-name").textContent = ws.name || "Untitled workspace";
  $("me").textContent = ws.display_name || "";
  $("me").setAttribute("aria-label", `Your name: ${ws.display_name || ""} (change)`);
  document.title = `${ws.name || "Workspace"} · openprod`;
  const ov = ws.active_overlay;
  if (ov) {
    // while staging, undo/redo act on the overlay (J13); the engine's can_undo/can_redo
    // describe the canonical stack, so use the overlay's own flags when given, else offer both
    // (an empty step answers "Nothing to undo")
    setUndoRedo(ov.can_undo ?? true, ov.can_redo ?? true, ov);
  } else {
    setUndoRedo(ws.can_undo, ws.can_redo, ws);
  }
  if (typeof ws.conflicts_open === "number") conflicts.setCount(ws.conflicts_open);
  const active = ws.active_overlay ? ws.active_overlay.id : null;
  if (active !== staging.activeId || (ws.active_overlay && staging.active &&
    ws.active_overlay.changes !== staging.active.changes)) staging.refresh().catch(() => {});
});

const refreshTables = coalesce(async (seq) => {
  const r = await api.get("/tables/list", { after: seq || undefined });
  if (r.seq < state.tablesSeq) return;
  state.tablesSeq = r.seq;
  const before = tableById(state.tableId);
  state.tables = r.tables;
  renderTableList();
  const now = tableById(state.tableId);
  if (!now) {
    const remembered = localStorage.getItem(rememberKey());
    const pick = tableById(remembered) || state.tables[0] || null;
    await selectTable(pick ? pick.id : null);
  } else if (!before || JSON.stringify(before) !== JSON.stringify(now)) {
    showTableHeader(now);
    grid.setTable(now, state.records);
    applyAndShow();
    viewbar.render();
    await Promise.all([refreshRecords(r.seq),
      refreshStacks().catch((e) => reportError(e, "Couldn't load the stacks"))]);
  } else {
    // another table changed (e.g. a module adopted): it may bring a stack for this one
    refreshStacks().catch(() => {});
  }
});

function rememberKey() {
  return `openprod.table.${state.ws ? state.ws.id : ""}`;
}

async function selectTable(id) {
  grid.flushEdit();
  if (id !== state.tableId) {
    showView(null);
    viewbar.close({ focus: false });
  }
  flushSave();
  state.tableId = id;
  setRecords([]);
  state.recordsSeq = 0;
  view.tableId = null;
  renderTableList();
  const t = tableById(id);
  $("empty-state").hidden = !!t;
  $("table-view").hidden = !t;
  if (!t) return;
  localStorage.setItem(rememberKey(), id);
  showTableHeader(t);
  renderViewTabs();
  const [r, vs] = await Promise.all([api.get("/records/list", { table: id }),
    loadViewSettings(id)]);
  if (state.tableId !== id) return;
  await withCanonical(id, r);
  if (state.tableId !== id) return;
  setRecords(r.records);
  state.recordsSeq = r.seq;
  recordsByTable.set(id, Promise.resolve(r.records));
  view.tableId = id;
  view.settings = vs.settings;
  view.stacks = vs.stacks;
  view.stackOrder = null;
  view.stackEdges = new Map();
  if (view.settings.stack) {
    await loadStack().catch((e) => reportError(e, "Couldn't load the stack"));
    if (state.tableId !== id) return;
  }
  grid.setTable(t, r.records);
  applyAndShow();
  viewbar.render();
}

function showTableHeader(t) {
  $("table-title").textContent = t.label;
  $("print-btn").hidden = printer.available(t.id).length === 0;
}

async function reloadAll() {
  recordsByTable.clear();
  labels.clear();
  files.reset();
  inspector.refresh(); // the open record, its links and history, asked again (reconnect)
  state.tablesSeq = 0;
  state.recordsSeq = 0;
  await refreshWorkspace();
  await refreshTables();
  if (state.tableId) {
    await refreshRecords();
    if (view.settings.stack) await refreshStack().catch(() => {});
  }
  // (each is also refreshed by its own events; a failure here must not stop the grid loading)
  await Promise.all([conflicts.refresh().catch((e) => reportError(e, "Couldn't load conflicts")),
    staging.refresh().catch((e) => reportError(e, "Couldn't load overlays")),
    sync.refresh().catch((e) => reportError(e, "Couldn't load the sync status")),
    modules.refresh().catch((e) => reportError(e, "Couldn't load the modules")),
    rules.reload().catch((e) => reportError(e, "Couldn't load the rules")),
    scripts.reload().catch((e) => reportError(e, "Couldn't load the scripts"))]);
}

function renderTableList() {
  const host = $("table-list");
  host.replaceChildren();
  const groups = new Map();
  for (const t of state.tables) {
    if (!groups.has(t.module)) groups.set(t.module, []);
    groups.get(t.module).push(t);
  }
  if (!state.tables.length) {
    const p = document.createElement("p");
    p.className = "side-empty";
    p.textContent = "No tables yet";
    host.append(p);
  }
  for (const [module, tables] of groups) {
    if (groups.size > 1) {
      const h = document.createElement("h3");
      h.className = "side-group";
      h.textContent = module === "workspace" ? "This workspace" : module;
      host.append(h);
    }
    const ul = document.createElement("ul");
    ul.className = "table-list";
    for (const t of tables) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "table-link";
      b.innerHTML = icon("table");
      const span = document.createElement("span");
      span.textContent = t.label;
      b.append(span);
      if (t.id === state.tableId) b.setAttribute("aria-current", "page");
      b.addEventListener("click", () => selectTable(t.id).catch((e) => reportError(e, "Couldn't open the table")));
      li.append(b);
      ul.append(li);
    }
    host.append(ul);
  }
}

// --- commands -----------------------------------------------------------------------------

async function addRecord() {
  const tableId = state.tableId;
  if (!tableId || state.blocked) return;
  grid.flushEdit();
  try {
    const r = await command(() => api.post("/records/create", { table: tableId, values: {} }));
    const st = view.tableId === tableId ? view.settings.stack : null;
    if (st) {
      // J8: in stack mode a new record joins the shown stack, at its end
      const last = view.stackOrder && view.stackOrder.length
        ? view.stackEdges.get(view.stackOrder[view.stackOrder.length - 1]) : null;
      const e = await command(() => api.post("/edges/create", {
        type: st.edge_type, src: r.id, dst: st.parent, ...(last ? { after: last } : {}),
      }));
      await Promise.all([patchRecords([r.id], e.seq), refreshStack(e.seq)]);
    } else {
      await patchRecords([r.id], r.seq);
    }
    if (state.tableId === tableId) grid.focusRecord(r.id);
    announce("Record added");
    refreshWorkspace().catch(() => {});
  } catch (err) {
    reportError(err, "Couldn't add a record");
  }
}

async function deleteRecords(ids, { label } = {}) {
  if (!ids.length) return;
  const question = ids.length === 1
    ? `Delete the record “${label || "this record"}”? You can undo this.`
    : `Delete ${ids.length} records? You can undo this.`;
  if (!window.confirm(question)) return;
  try {
    const r = await command(() => api.post("/records/delete", { ids }));
    await Promise.all([patchRecords(ids, r.seq), refreshWorkspace()]);
    dismissUndoOffer = toast(ids.length === 1 ? "Record deleted" : `${ids.length} records deleted`, {
      action: { label: "Undo", run: () => undoRedo("undo") },
    });
  } catch (err) {
    reportError(err, "Couldn't delete");
  }
}

/** J13: the buttons say what they would do ("Undo: set Cue 42 · Time (Ctrl+Z)"). */
function setUndoRedo(canUndo, canRedo, labels = null) {
  $("undo-btn").disabled = !canUndo;
  $("redo-btn").disabled = !canRedo;
  const undo = labels && labels.undo_label;
  const redo = labels && labels.redo_label;
  $("undo-btn").title = undo ? `Undo: ${undo} (${mod}Z)` : `Undo (${mod}Z)`;
  $("redo-btn").title = redo ? `Redo: ${redo} (${redoKeys})` : `Redo (${redoKeys})`;
}

function skippedMessage(kind, skipped) {
  const verb = kind === "undo" ? "undo" : "redo";
  const parts = skipped.slice(0, 3).map((s) => {
    const who = s.display_name || s.actor_name ||
      (s.actor ? `another user (${String(s.actor).slice(0, 8)})` : "another user");
    const rec = state.byId.get(s.entity_id);
    const name = rec ? recordLabel(tableById(state.tableId), rec) : `record …${shortId(s.entity_id)}`;
    let what;
    if (s.field === "$entity") what = name;
    else if (s.field === "$edge") what = "a link";
    else if (String(s.field).startsWith("$table:")) what = `${name} in ${s.label || "a table"}`;
    else what = `${name} · ${s.label || s.field}`;
    return `${who} changed ${what}`;
  });
  const more = skipped.length > 3 ? ` and ${skipped.length - 3} more` : "";
  return `Can't ${verb} — ${parts.join("; ")}${more} after you. ` +
    `The next ${verb} moves to the step before.`;
}

let dismissUndoOffer = () => {};

async function undoRedo(kind) {
  if (state.blocked) return;
  dismissUndoOffer();
  grid.flushEdit();
  try {
    const r = await command(() => api.post(`/${kind}`, {}));
    setUndoRedo(r.can_undo, r.can_redo);
    refreshWorkspace().catch(() => {}); // the next steps' names
    if (r.status === "empty") {
      toast(kind === "undo" ? "Nothing to undo" : "Nothing to redo");
    } else if (r.status === "skipped") {
      toast(skippedMessage(kind, r.skipped || []), { kind: "warning", timeout: 12000 });
    } else {
      announce(kind === "undo" ? "Undone" : "Redone");
      const work = [refreshRecords(r.seq), staging.active ? staging.refresh() : null];
      if ((r.edges_not_restored || []).length) {
        toast(`${r.edges_not_restored.length} link(s) could not be restored`, { kind: "warning" });
      }
      await Promise.all(work);
    }
  } catch (err) {
    reportError(err, kind === "undo" ? "Couldn't undo" : "Couldn't redo");
  }
}

async function newTable() {
  if (state.blocked) return;
  grid.flushEdit();
  const id = await newTableDialog({
    tables: state.tables,
    create: async (body) => {
      const r = await command(() => api.post("/tables/create", body));
      await refreshTables(r.seq);
      return r.table;
    },
  });
  if (id) {
    await selectTable(id);
    announce("Table created");
    grid.focusActive();
  }
}

/** The display name teammates see (J1 sets it first; it can change any time). */
async function changeName() {
  const name = await askText({ title: "Your name", label: "Name teammates see",
    initial: state.ws ? state.ws.display_name || "" : "", submitLabel: "Save",
    help: "Shown next to your changes, in conflicts and in the peers list on every computer." });
  if (!name) return;
  await command(() => api.post("/identity/update", { display_name: name }));
  await refreshWorkspace();
  announce(`Your name is now ${name}`);
}

// --- events -------------------------------------------------------------------------------

function onEvent(ev) {
  inspector.onEvent(ev); // re-reads the open record; never swallows the event
  if (csv.onEvent(ev)) return; // import_progress
  if (rules.onEvent(ev)) return; // rule_proposals_changed, rules_changed, automation_suspended
  if (scripts.onEvent(ev)) return; // script_*, scripts_changed
  if (files.onEvent(ev)) return; // blob_fetch_progress, blob_available, blob_fetch_failed
  switch (ev.type) {
    case "records_changed": {
      recordsByTable.delete(ev.table);
      if (mountedView) mountedView.changed(ev.table);
      const changed = ev.entity_ids || [];
      for (const id of changed) labels.delete(id);
      if (ev.table === state.tableId) {
        // re-fetch only the named rows; the view re-applies (a row may leave or move)
        patchRecords(changed, ev.seq).catch((e) => reportError(e, "Couldn't refresh"));
      } else {
        const set = new Set(changed);
        if (state.records.some((r) => Object.values(r.values).some((v) => set.has(v)))) {
          grid.refreshLinks();
          applySoon();
        }
      }
      const st = view.settings.stack;
      // a link op names both ends: a move in the stack names its parent (J8, live)
      if (st && view.tableId === state.tableId &&
        (ev.table === state.tableId || changed.includes(st.parent))) {
        refreshStack(ev.seq).catch(() => {});
      }
      if (view.stacks.some((x) => x.parent_table === ev.table)) {
        viewbar.renderStack(); // a cue list renamed, added or removed
      }
      refreshWorkspace().catch(() => {});
      break;
    }
    case "tables_changed":
      refreshTables(ev.seq).catch((e) => reportError(e, "Couldn't refresh the tables"));
      // a module adopted here or by a peer: its views may now be offered
      modules.refresh().catch((e) => reportError(e, "Couldn't refresh the modules"));
      break;
    case "conflict_opened":
    case "conflict_updated":
    case "conflict_resolved":
    case "resolution_rejected":
      conflicts.refresh().catch((e) => reportError(e, "Couldn't refresh the conflicts"));
      refreshRecords(ev.seq).catch(() => {});
      break;
    case "overlays_changed":
    case "overlay_drift":
      staging.refresh().catch((e) => reportError(e, "Couldn't refresh the staging state"));
      refreshRecords(ev.seq).catch(() => {});
      refreshWorkspace().catch(() => {});
      if (ev.type === "overlay_drift" && staging.activeId !== ev.overlay_id) {
        // a stashed overlay drifted: say so (the active one shows it in its banner)
        toast("A stashed overlay has fields changed by others; open Overlays to see it.",
          { kind: "warning" });
      }
      break;
    case "workspace_opened":
      state.tableId = null;
      // the engine has switched already: a pending save would land in the other workspace
      clearTimeout(saveTimer);
      savePending = null;
      view.tableId = null;
      reloadAll().catch((e) => reportError(e, "Couldn't load the workspace"));
      break;
    default:
      sync.onEvent(ev); // sync_* , peer_* and workspace_joined (J3, J15)
      break;
  }
}

function setConnection(s) {
  const box = $("conn");
  box.dataset.state = s;
  const text = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" }[s];
  box.querySelector(".conn-text").textContent = text;
  box.title = s === "live" ? "Connected to the engine: changes appear as they happen"
    : "The live connection to the engine dropped; trying again. Your saved changes are safe.";
}

const events = new EventStream({
  onEvent,
  onResync: () => reloadAll().catch((e) => reportError(e, "Couldn't reload")),
  onStatus: setConnection,
  onFailure: () => { api.get("/identity").catch(() => {}); },
});

// --- keyboard -----------------------------------------------------------------------------

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable || target.matches("textarea, select")) return true;
  if (target.matches("input")) {
    return !["checkbox", "radio", "button", "submit", "reset"].includes(target.type);
  }
  return false;
}

document.addEventListener("keydown", (e) => {
  if (state.blocked || document.querySelector("dialog[open]")) return;
  const m = e.ctrlKey || e.metaKey;
  if (!m || e.altKey) return;
  const k = e.key.toLowerCase();
  if (k === "f" && !e.shiftKey && state.tableId && !state.view && !$("table-view").hidden) {
    // Ctrl/⌘+F searches the table (spec 05 §4) instead of the page
    e.preventDefault();
    viewbar.focusSearch();
  } else if (e.key === "Enter") {
    e.preventDefault();
    addRecord();
  } else if (isTyping(e.target)) {
    // the editor's own undo applies while typing
  } else if (k === "z" && !e.shiftKey) {
    e.preventDefault();
    undoRedo("undo");
  } else if ((k === "z" && e.shiftKey) || (k === "y" && e.ctrlKey && !e.metaKey)) {
    e.preventDefault();
    undoRedo("redo");
  }
});

// --- start --------------------------------------------------------------------------------

function showBlocker(title, html) {
  state.blocked = true;
  events.stop();
  $("blocker-title").textContent = title;
  $("blocker-text").innerHTML = html;
  $("blocker").hidden = false;
  $("app").hidden = true;
}

api.onUnauthorized(() => showBlocker("Not signed in",
  "This page has no valid session for the engine. Open the link printed by " +
  "<code>openprod serve</code> (it ends with <code>?token=…</code>)."));

async function main() {
  hydrateIcons();
  $("undo-btn").title = `Undo (${mod}Z)`;
  $("undo-btn").setAttribute("aria-keyshortcuts", "Control+Z Meta+Z");
  $("redo-btn").title = `Redo (${redoKeys})`;
  $("redo-btn").setAttribute("aria-keyshortcuts", "Control+Shift+Z Meta+Shift+Z Control+Y");
  $("add-record-btn").title = `New record (${mod}Enter)`;
  document.querySelector(".skip-link").addEventListener("click", (e) => {
    if (!state.tableId) return;
    e.preventDefault();
    grid.focusActive();
  });
  $("me").addEventListener("click", () => changeName()
    .catch((e) => reportError(e, "Couldn't change your name")));
  $("undo-btn").addEventListener("click", () => undoRedo("undo"));
  $("redo-btn").addEventListener("click", () => undoRedo("redo"));
  $("new-table-btn").addEventListener("click", newTable);
  $("empty-new-table").addEventListener("click", newTable);
  // J1–J3 shell (welcome, Switch…, Invite…, Adopt a module): web/welcome.js; its Create
  // workspace dialog also offers modules to adopt (J2)
  const shell = mountShell({ sync, reportError, workspace: () => state.ws,
    openModules: () => modules.openPanel() });
  $("new-workspace-btn").addEventListener("click", () => {
    if (state.blocked) return;
    grid.flushEdit();
    shell.createWorkspace().catch((e) => reportError(e, "Couldn't create the workspace"));
  });
  $("import-csv-btn").addEventListener("click", () => csv.openImport());
  $("export-csv-btn").addEventListener("click", (e) => csv.exportMenu(e.currentTarget));
  $("print-btn").addEventListener("click", () => printer.openFor(state.tableId)
    .catch((e) => reportError(e, "Couldn't prepare the printout")));
  $("add-record-btn").addEventListener("click", addRecord);
  $("modules-btn").addEventListener("click", () => modules.openPanel()
    .catch((e) => reportError(e, "Couldn't open the modules")));
  $("view-tabs").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const tabs = [...$("view-tabs").querySelectorAll(".view-tab")];
    const i = tabs.indexOf(document.activeElement);
    if (i < 0) return;
    e.preventDefault();
    const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    next.focus();
    next.click();
  });
  $("delete-selected-btn").addEventListener("click", () => deleteRecords([...state.selection]));
  // view settings typed just before leaving are not lost
  window.addEventListener("pagehide", () => flushSave({ keepalive: true }));
  try {
    const probe = await api.get("/workspace/current");
    state.ws = probe;
  } catch (err) {
    if (err.code !== "unauthorized") {
      const div = document.createElement("div");
      div.textContent = err.message;
      showBlocker("Can't reach the engine", div.innerHTML);
    }
    return;
  }
  events.start();
  try {
    await reloadAll();
  } catch (err) {
    reportError(err, "Couldn't load the workspace");
  }
  $("app").hidden = false;
  document.body.classList.add("ready");
}

main();
