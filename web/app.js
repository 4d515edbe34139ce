// The app shell: state, sidebar, top bar, and the wiring between the API, the event stream and
// the grid. The browser holds no business logic (spec 05 §1): it asks the engine, shows the
// answer, and re-asks when an event says something changed.

import * as api from "./api.js";
import { EventStream } from "./events.js";
import { Grid, isMac } from "./grid.js";
import { newTableDialog } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { hydrateIcons, icon } from "./icons.js";
import { shortId } from "./format.js";
import { Conflicts } from "./conflicts.js";
import { Staging } from "./staging.js";
import { Sync } from "./sync.js";
import { newWorkspaceDialog, showRecoverySecret } from "./access.js";
import { Modules } from "./modules.js";
import { Rules } from "./rules.js";
import { Scripts } from "./scripts.js";
import { Files } from "./files.js";

const $ = (id) => document.getElementById(id);

const state = {
  ws: null, // GET /workspace/current
  tables: [],
  tableId: null,
  records: [],
  recordsSeq: 0,
  tablesSeq: 0,
  selection: [],
  blocked: false,
  view: null, // name of the module view shown instead of the grid, or null
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

// --- conflicts and staging ----------------------------------------------------------------

/** A record's person-readable name (its first text value), fetched when not on screen. */
async function recordName(entityId, tableId) {
  const here = state.records.find((r) => r.id === entityId);
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
    await Promise.all([refreshRecords(r.seq), refreshWorkspace(),
      r.staged ? staging.refresh() : null]);
  },
  resolveConflict: (id, field) => conflicts.openForCell(id, field)
    .catch((e) => reportError(e, "Couldn't open the conflict")),
  openDrift: () => staging.openDrift(),
  files,
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
  linkLabel(id) {
    const here = state.records.find((r) => r.id === id);
    if (here) return recordLabel(tableById(state.tableId), here);
    if (labels.has(id)) return labels.get(id);
    requestLabel(id);
    return null;
  },
  onRows(n) {
    $("record-count").textContent = n === 1 ? "1 record" : `${n} records`;
  },
  onSelection(ids) {
    state.selection = ids;
    const btn = $("delete-selected-btn");
    btn.disabled = ids.length === 0;
    $("delete-selected-label").textContent = ids.length ? `Delete selected (${ids.length})`
      : "Delete selected";
  },
});

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
    if (labels.get(id)) grid.refreshLinks();
  });
}

// --- loading ------------------------------------------------------------------------------

/** While staging, note each staged cell's real (canonical) value for its tooltip. */
async function withCanonical(tableId, r) {
  if (!r.records.some((rec) => (rec.staged || []).length)) return;
  try {
    const c = await api.get("/records/list", { table: tableId, after: r.seq, canonical: 1 });
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

const refreshRecords = coalesce(async (seq) => {
  const tableId = state.tableId;
  if (!tableId) return;
  const r = await api.get("/records/list", { table: tableId, after: seq || undefined });
  if (tableId !== state.tableId || r.seq < state.recordsSeq) return;
  await withCanonical(tableId, r);
  if (tableId !== state.tableId) return;
  state.recordsSeq = r.seq;
  state.records = r.records;
  recordsByTable.set(tableId, Promise.resolve(r.records));
  grid.update(r.records);
});

const refreshWorkspace = coalesce(async () => {
  const ws = await api.get("/workspace/current");
  state.ws = ws;
  $("ws-name").textContent = ws.name || "Untitled workspace";
  $("me").textContent = ws.display_name || "";
  document.title = `${ws.name || "Workspace"} · openprod`;
  const ov = ws.active_overlay;
  if (ov) {
    // while staging, undo/redo act on the overlay (J13); the engine's can_undo/can_redo
    // describe the canonical stack, so use the overlay's own flags when given, else offer both
    // (an empty step answers "Nothing to undo")
    setUndoRedo(ov.can_undo ?? true, ov.can_redo ?? true);
  } else {
    setUndoRedo(ws.can_undo, ws.can_redo);
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
    await refreshRecords(r.seq);
  }
});

function rememberKey() {
  return `openprod.table.${state.ws ? state.ws.id : ""}`;
}

async function selectTable(id) {
  grid.flushEdit();
  if (id !== state.tableId) showView(null);
  state.tableId = id;
  state.records = [];
  state.recordsSeq = 0;
  renderTableList();
  const t = tableById(id);
  $("empty-state").hidden = !!t;
  $("table-view").hidden = !t;
  if (!t) return;
  localStorage.setItem(rememberKey(), id);
  showTableHeader(t);
  renderViewTabs();
  const r = await api.get("/records/list", { table: id });
  if (state.tableId !== id) return;
  await withCanonical(id, r);
  if (state.tableId !== id) return;
  state.records = r.records;
  state.recordsSeq = r.seq;
  recordsByTable.set(id, Promise.resolve(r.records));
  grid.setTable(t, r.records);
}

function showTableHeader(t) {
  $("table-title").textContent = t.label;
}

async function reloadAll() {
  recordsByTable.clear();
  labels.clear();
  files.reset();
  state.tablesSeq = 0;
  state.recordsSeq = 0;
  await refreshWorkspace();
  await refreshTables();
  if (state.tableId) await refreshRecords();
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
    await refreshRecords(r.seq);
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
    await Promise.all([refreshRecords(r.seq), refreshWorkspace()]);
    dismissUndoOffer = toast(ids.length === 1 ? "Record deleted" : `${ids.length} records deleted`, {
      action: { label: "Undo", run: () => undoRedo("undo") },
    });
  } catch (err) {
    reportError(err, "Couldn't delete");
  }
}

function setUndoRedo(canUndo, canRedo) {
  $("undo-btn").disabled = !canUndo;
  $("redo-btn").disabled = !canRedo;
}

function skippedMessage(kind, skipped) {
  const verb = kind === "undo" ? "undo" : "redo";
  const parts = skipped.slice(0, 3).map((s) => {
    const who = s.display_name || s.actor_name ||
      (s.actor ? `another user (${String(s.actor).slice(0, 8)})` : "another user");
    const rec = state.records.find((r) => r.id === s.entity_id);
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

/** Create a workspace (spec 05 J2) and show its recovery key once (spec 03 §2 Create). The
 * engine opens it and says so with `workspace_opened`, which reloads the screen. */
async function newWorkspace() {
  if (state.blocked) return;
  grid.flushEdit();
  const r = await newWorkspaceDialog();
  if (!r) return;
  announce("Workspace created");
  if (r.recovery_secret) {
    await showRecoverySecret(r.recovery_secret, { title: "Save the recovery key" });
  }
}

// --- events -------------------------------------------------------------------------------

function onEvent(ev) {
  if (rules.onEvent(ev)) return; // rule_proposals_changed, rules_changed, automation_suspended
  if (scripts.onEvent(ev)) return; // script_*, scripts_changed
  if (files.onEvent(ev)) return; // blob_fetch_progress, blob_available, blob_fetch_failed
  switch (ev.type) {
    case "records_changed":
      recordsByTable.delete(ev.table);
      if (mountedView) mountedView.changed(ev.table);
      for (const id of ev.entity_ids || []) labels.delete(id);
      if (ev.table === state.tableId) {
        refreshRecords(ev.seq).catch((e) => reportError(e, "Couldn't refresh"));
      } else if ((ev.entity_ids || []).some((id) => grid.records && [...grid.records.values()]
        .some((r) => Object.values(r.values).includes(id)))) {
        grid.refreshLinks();
      }
      refreshWorkspace().catch(() => {});
      break;
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
  if (e.key === "Enter") {
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
  $("redo-btn").title = `Redo (${isMac() ? "⇧⌘Z" : "Ctrl+Shift+Z or Ctrl+Y"})`;
  $("redo-btn").setAttribute("aria-keyshortcuts", "Control+Shift+Z Meta+Shift+Z Control+Y");
  $("add-record-btn").title = `New record (${mod}Enter)`;
  document.querySelector(".skip-link").addEventListener("click", (e) => {
    if (!state.tableId) return;
    e.preventDefault();
    grid.focusActive();
  });
  $("undo-btn").addEventListener("click", () => undoRedo("undo"));
  $("redo-btn").addEventListener("click", () => undoRedo("redo"));
  $("new-table-btn").addEventListener("click", newTable);
  $("empty-new-table").addEventListener("click", newTable);
  $("new-workspace-btn").addEventListener("click", () => newWorkspace()
    .catch((e) => reportError(e, "Couldn't create the workspace")));
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
