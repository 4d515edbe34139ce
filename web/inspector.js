// The record inspector: the right-hand panel showing one record (spec 05 §2 "Right: the record
// inspector"; J6 form view with Save and a history drawer, J7 Links in both directions, J9
// Attachments). It owns the panel's presentation only: every write goes to the engine (one
// `/records/update` per Save, so a Save is one undo step; `/edges/create` and `/edges/delete`
// for links), and the panel re-reads the record, its links and its history when an event names
// it. It also answers the grid's "who last changed this cell" question (`lastChange`), from the
// same history route, cached until the record changes.

import { el } from "./dom.js";
import { icon } from "./icons.js";
import * as F from "./format.js";
import { hasFiles } from "./files.js";
import { when } from "./conflicts.js";

const HISTORY_PAGE = 20;
const HISTORY_MAX = 1000; // the route's largest page
const PICKER_MAX = 60;

const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
const quoted = (s) => `“${s}”`;
let uid = 0;

/** "2 min ago", "3 h ago", or the "Sat 18:02" style time for older moments. */
export function ago(ms, now = Date.now()) {
  if (typeof ms !== "number") return "";
  const s = Math.round((now - ms) / 1000);
  if (s < 45) return "just now";
  if (s < 90) return "1 min ago";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 6 * 3600) return `${Math.round(s / 3600)} h ago`;
  return when(ms);
}

/** The person behind a history entry: display name, else the first 8 hex of their key. */
function who(entry) {
  if (entry.display_name) return entry.display_name;
  return entry.actor ? `Someone (${String(entry.actor).slice(0, 8)})` : "Someone";
}

/** "character: Juliet" for a link's properties. */
function propsText(props) {
  return Object.entries(props || {}).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k.replace(/_/g, " ")}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
}

function clip(s, n = 80) {
  const t = String(s).replace(/\s+/g, " ").trim();
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

export class Inspector {
  /**
   * @param {HTMLElement} host  the `<aside id="inspector-host">` (hidden while closed)
   * @param {object} ctx
   *   api: {get, post};  toast(msg, opts);  announce(msg)
   *   tables(): tableDefs;  tableById(id);  recordLabel(table, rec): string
   *   commit(updates): Promise — `/records/update {updates}` (one undo step); rejects {message}
   *   files: the Files of files.js;  refreshAfter(seq): refresh the rest of the screen
   *   optional: resolveConflict(id, field), openDrift(id, field)
   */
  constructor(host, ctx) {
    this.host = host;
    this.ctx = ctx;
    this.api = ctx.api;
    this.id = null;
    this.rec = null;
    this.missing = false;
    this.seq = 0;
    this.rows = new Map(); // "table|field" -> form row state (see buildForm)
    this.formSig = "";
    this.edges = [];
    this.edgeTypes = null; // Promise<[{type, label, ordered, props}]>
    this.names = new Map(); // record id -> Promise<{name, tables}>
    this.recordsOf = new Map(); // table id -> Promise<records> (link pickers, link fields)
    this.learned = new Map(); // edge type -> {src: Set<table>, dst: Set<table>}
    this.history = { open: false, field: "", entries: [], next: null, error: "", loading: false };
    this.lastCache = new Map(); // "id|field" -> Promise<{who, at}|null>
    this.changes = new Map(); // record id -> how many records_changed named it (stale answers)
    this.loading = null;
    this.again = false;
    this.returnFocus = null;
    this.uploadWatch = new Map(); // "id|field" -> animation frame of an upload's progress
    this.uploadErrors = new Map(); // field name -> message
    this.fileRender = () => { if (this.id) this.renderFiles(); };
    if (ctx.files && ctx.files.views instanceof Set) ctx.files.views.add(this.fileRender);
    host.setAttribute("role", "complementary");
    host.addEventListener("keydown", (e) => this.onKeyDown(e));
  }

  // --- opening and closing ----------------------------------------------------------------

  get isOpen() {
    return this.id !== null;
  }

  /** Show record `recordId` (from the grid's open button, or a link in the panel). */
  async open(recordId) {
    if (!recordId) return;
    if (this.id === recordId) {
      this.title?.focus();
      return;
    }
    if (!this.confirmDiscard()) return;
    if (!this.isOpen) {
      const a = document.activeElement;
      this.returnFocus = a && a !== document.body && !this.host.contains(a) ? a : null;
    }
    this.id = recordId;
    this.rec = null;
    this.missing = false;
    this.seq = 0;
    this.rows = new Map();
    this.formSig = "";
    this.edges = [];
    this.uploadErrors.clear();
    this.history.entries = [];
    this.history.next = null;
    this.history.error = "";
    this.history.field = "";
    this.closePicker();
    this.build();
    this.host.hidden = false;
    document.body.classList.add("inspector-open");
    this.title.focus();
    await this.reload();
  }

  close() {
    if (!this.isOpen) return;
    if (!this.confirmDiscard()) return;
    this.id = null;
    this.rec = null;
    this.rows = new Map();
    this.closePicker();
    for (const frame of this.uploadWatch.values()) cancelAnimationFrame(frame);
    this.uploadWatch.clear();
    this.host.hidden = true;
    this.host.replaceChildren();
    document.body.classList.remove("inspector-open");
    const back = this.returnFocus;
    this.returnFocus = null;
    if (back && back.isConnected) back.focus({ preventScroll: true });
    this.ctx.announce?.("Record panel closed");
  }

  /** True when there is nothing unsaved, or the user agrees to drop it. */
  confirmDiscard() {
    const dirty = this.dirtyRows();
    if (!dirty.length) return true;
    return window.confirm(`Discard your unsaved changes to ${this.name()}? ` +
      `(${dirty.map((r) => r.field.label).join(", ")})`);
  }

  onKeyDown(e) {
    if (e.key === "Escape" && !e.defaultPrevented) {
      e.preventDefault();
      this.close();
    } else if ((e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === "s") {
      e.preventDefault();
      this.save();
    }
  }

  // --- events -----------------------------------------------------------------------------

  /** Re-read what an event names; never swallows it (the app's own handling still runs). */
  onEvent(ev) {
    switch (ev.type) {
      case "records_changed": {
        const ids = ev.entity_ids || [];
        this.recordsOf.delete(ev.table);
        for (const id of ids) {
          this.changes.set(id, (this.changes.get(id) || 0) + 1);
          this.names.delete(id);
          for (const k of [...this.lastCache.keys()]) {
            if (k.startsWith(`${id}|`)) this.lastCache.delete(k);
          }
        }
        if (!this.isOpen) break;
        const others = new Set(this.edges.map((g) => (g.src === this.id ? g.dst : g.src)));
        if (ids.includes(this.id) || ids.some((id) => others.has(id))) this.reload(ev.seq);
        break;
      }
      case "tables_changed":
        this.edgeTypes = null;
        this.recordsOf.clear();
        if (this.isOpen) this.reload(ev.seq);
        break;
      case "conflict_opened":
      case "conflict_updated":
      case "conflict_resolved":
      case "overlays_changed":
      case "overlay_drift":
        if (this.isOpen) this.reload(ev.seq);
        break;
      case "resync": // the engine replayed its projection: everything may have changed
        this.refresh();
        break;
      case "workspace_opened":
        this.rows = new Map(); // a different workspace: its drafts make no sense
        this.lastCache.clear();
        this.names.clear();
        this.recordsOf.clear();
        this.edgeTypes = null;
        this.close();
        break;
      default:
        break;
    }
    return false;
  }

  // --- loading ----------------------------------------------------------------------------

  /** Forget what was cached and ask again (after a reconnect: events may have been missed). */
  refresh() {
    this.lastCache.clear();
    this.names.clear();
    this.recordsOf.clear();
    this.edgeTypes = null;
    if (!this.isOpen) return Promise.resolve();
    this.seq = 0;
    return this.reload().catch(() => {});
  }

  /** Re-read the record, its links (and the history when shown); one at a time. */
  reload(seq = 0) {
    this.seq = Math.max(this.seq, seq || 0);
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      try {
        do {
          this.again = false;
          await this.load(this.id, this.seq);
        } while (this.again && this.isOpen);
      } catch (err) {
        this.showError(`Couldn't show the record: ${err.message || err}`);
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  async load(id, seq) {
    if (!id) return;
    const after = seq || undefined;
    let rec = null;
    let missing = false;
    try {
      rec = await this.api.get(`/records/${encodeURIComponent(id)}`, { after });
    } catch (err) {
      if (err.status !== 404) {
        this.showError(`Couldn't load the record: ${err.message}`);
        return;
      }
      missing = true;
    }
    let edges = [];
    if (!missing) {
      try {
        edges = (await this.api.get("/edges/list", { entity: id, after })).edges || [];
      } catch {
        edges = this.edges;
      }
    }
    if (this.id !== id) return;
    this.rec = rec;
    this.missing = missing;
    this.edges = edges;
    this.render();
    if (this.history.open && !missing) this.loadHistory(); // as many entries as shown
  }

  showError(message) {
    if (!this.status) return;
    this.status.hidden = false;
    this.status.textContent = message;
  }

  // --- building ---------------------------------------------------------------------------

  build() {
    const n = ++uid;
    this.n = n;
    this.kicker = el("p", { class: "insp-kicker" });
    this.title = el("h2", { class: "insp-title", id: `insp-title-${n}`, tabindex: "-1",
      text: "Loading…" });
    const x = el("button", { type: "button", class: "icon-btn insp-close",
      "aria-label": "Close the record panel", title: "Close (Esc)", html: icon("close") });
    x.addEventListener("click", () => this.close());
    this.status = el("p", { class: "insp-status", role: "status", hidden: true });

    this.fieldsSec = el("section", { class: "insp-section", "aria-labelledby": `insp-f-${n}` },
      el("h3", { class: "insp-h", id: `insp-f-${n}`, text: "Fields" }));
    this.form = el("form", { class: "insp-form", novalidate: true });
    this.fieldList = el("div", { class: "insp-fields" });
    this.formError = el("p", { class: "insp-form-error", role: "alert", hidden: true });
    this.saveBtn = el("button", { type: "submit", class: "btn btn-primary btn-sm",
      disabled: true, "aria-keyshortcuts": "Control+S Meta+S", title: "Save (Ctrl+S)" },
    "Save");
    this.revertBtn = el("button", { type: "button", class: "btn btn-secondary btn-sm",
      disabled: true, text: "Revert" });
    this.dirtyNote = el("span", { class: "insp-dirty-note muted", "aria-live": "polite" });
    this.form.append(this.fieldList, this.formError,
      el("div", { class: "insp-actions" }, this.saveBtn, this.revertBtn, this.dirtyNote));
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
    this.revertBtn.addEventListener("click", () => this.revert());
    this.fieldsSec.append(this.form);

    this.linksSec = el("section", { class: "insp-section", "aria-labelledby": `insp-l-${n}` },
      el("h3", { class: "insp-h", id: `insp-l-${n}`, text: "Links" }));
    this.linkList = el("div", { class: "insp-links" });
    this.addLinkBtn = el("button", { type: "button", class: "btn btn-ghost btn-sm insp-add-link",
      "aria-expanded": "false" }, el("span", { html: icon("link") }), "Add link…");
    this.addLinkBtn.addEventListener("click", () => this.openPicker());
    this.pickerHost = el("div", { class: "insp-picker-host" });
    this.linksSec.append(this.linkList, this.addLinkBtn, this.pickerHost);

    this.filesSec = el("section", { class: "insp-section", "aria-labelledby": `insp-a-${n}`,
      hidden: true }, el("h3", { class: "insp-h", id: `insp-a-${n}`, text: "Attachments" }));
    this.fileList = el("div", { class: "insp-files" });
    this.filesSec.append(this.fileList);

    this.histSec = el("section", { class: "insp-section insp-history-sec",
      "aria-labelledby": `insp-h-${n}` });
    this.histToggle = el("button", { type: "button", class: "insp-h insp-toggle",
      id: `insp-h-${n}`, "aria-expanded": "false", "aria-controls": `insp-hb-${n}` },
    el("span", { class: "insp-caret", "aria-hidden": "true" }), "History");
    this.histToggle.addEventListener("click", () => this.toggleHistory());
    this.histBody = el("div", { class: "insp-history-body", id: `insp-hb-${n}`, hidden: true });
    this.histSec.append(el("h3", { class: "insp-h-wrap" }, this.histToggle), this.histBody);

    this.host.setAttribute("aria-labelledby", this.title.id);
    this.host.removeAttribute("aria-label");
    this.host.replaceChildren(
      el("header", { class: "insp-head" }, el("div", { class: "insp-head-text" },
        this.kicker, this.title), x),
      el("div", { class: "insp-body" }, this.status, this.fieldsSec, this.linksSec,
        this.filesSec, this.histSec));
    if (this.history.open) this.showHistoryBody(true);
  }

  tablesOfRec() {
    if (!this.rec) return [];
    return (this.rec.tables || [this.rec.table]).map((t) => this.ctx.tableById(t))
      .filter(Boolean);
  }

  name() {
    if (!this.rec) return this.missing ? "Deleted record" : "this record";
    const t = this.tablesOfRec()[0] || null;
    return this.ctx.recordLabel(t, this.rec);
  }

  render() {
    if (!this.isOpen || !this.title) return;
    if (this.missing) {
      this.title.textContent = "Record not found";
      this.kicker.textContent = "";
      this.status.hidden = false;
      this.status.textContent = "This record was deleted (or is in no table any more). " +
        "Undo brings it back.";
      for (const s of [this.fieldsSec, this.linksSec, this.filesSec, this.histSec]) s.hidden = true;
      return;
    }
    for (const s of [this.fieldsSec, this.linksSec, this.histSec]) s.hidden = false;
    this.status.hidden = true;
    const tables = this.tablesOfRec();
    this.kicker.textContent = tables.map((t) => t.label).join(" · ");
    this.title.textContent = this.name();
    this.renderFields();
    this.renderLinks().catch((err) => this.showError(`Couldn't show the links: ${err.message}`));
    this.renderFiles();
    if (this.history.open) this.renderHistoryFilter();
  }

  // --- fields (the form view; J6) ---------------------------------------------------------

  renderFields() {
    const tables = this.tablesOfRec();
    const sig = JSON.stringify(tables.map((t) => [t.id, t.fields]));
    if (sig !== this.formSig) this.buildForm(tables, sig);
    for (const row of this.rows.values()) this.patchRow(row);
    this.syncDirty();
  }

  buildForm(tables, sig) {
    const old = this.rows;
    this.rows = new Map();
    this.formSig = sig;
    this.fieldList.replaceChildren();
    const several = tables.length > 1;
    for (const t of tables) {
      const group = el("div", { class: "insp-group", role: several ? "group" : null,
        "aria-label": several ? t.label : null });
      if (several) group.append(el("h4", { class: "insp-group-h", text: t.label }));
      for (const f of t.fields) {
        if (f.type === "blob_ref") continue; // shown under Attachments
        const k = `${t.id}|${f.name}`;
        const row = this.buildRow(t, f);
        const prev = old.get(k);
        if (prev && prev.dirty && prev.field.type === f.type) {
          row.base = prev.base;
          row.setText(prev.getText());
          row.dirty = true;
        }
        this.rows.set(k, row);
        group.append(row.el);
      }
      this.fieldList.append(group);
    }
    if (!this.rows.size) {
      this.fieldList.append(el("p", { class: "muted", text: "No fields to edit here." }));
    }
  }

  buildRow(t, f) {
    const id = `insp-${this.n}-${t.id}-${f.name}`.replace(/[^a-zA-Z0-9_-]/g, "_");
    const kind = F.kindOf(f);
    const row = { table: t, field: f, dirty: false, base: undefined, error: "", id };
    const label = el("label", { class: "insp-label", for: id, text: f.label });
    const type = el("span", { class: "insp-type muted", id: `${id}-type`,
      text: F.typeName(f).replace(/ \(.*\)$/, "") });
    let input;
    switch (kind) {
      case "longtext":
        input = el("textarea", { class: "input insp-input", id, rows: "4" });
        break;
      case "boolean":
        input = el("input", { type: "checkbox", class: "insp-check", id });
        break;
      case "enum":
        input = el("select", { class: "input insp-input", id });
        input.append(el("option", { value: "", text: "— none —" }));
        for (const c of F.choicesOf(f)) input.append(el("option", { value: c.key, text: c.label }));
        break;
      case "entity_ref":
        input = el("select", { class: "input insp-input", id });
        break;
      case "integer":
        input = el("input", { type: "text", inputmode: "numeric", class: "input insp-input num",
          id, autocomplete: "off" });
        break;
      case "float":
        input = el("input", { type: "text", inputmode: "decimal", class: "input insp-input num",
          id, autocomplete: "off" });
        break;
      case "duration":
        input = el("input", { type: "text", class: "input insp-input num", id,
          placeholder: "h:mm:ss", autocomplete: "off" });
        break;
      case "date":
        input = el("input", { type: "date", class: "input insp-input", id });
        break;
      case "datetime":
        input = el("input", { type: "datetime-local", class: "input insp-input", id });
        break;
      default:
        input = el("input", { type: "text", class: "input insp-input", id, autocomplete: "off" });
    }
    row.input = input;
    if (kind === "boolean") {
      row.getText = () => input.checked;
      row.setText = (v) => { input.checked = v === true; };
      row.parse = () => input.checked;
    } else {
      row.getText = () => input.value;
      row.setText = (v) => { input.value = v; };
      row.parse = () => F.parseInput(f, input.value);
    }
    row.show = (v) => {
      if (kind === "boolean") input.checked = v === true;
      else if (kind === "entity_ref") this.fillLinkSelect(row, v);
      else if (kind === "enum") {
        if (v && ![...input.options].some((o) => o.value === v)) {
          input.append(el("option", { value: v, text: String(v) }));
        }
        input.value = v ?? "";
      } else input.value = kind === "longtext" ? (v ?? "") : F.editText(f, v);
    };
    row.markers = el("span", { class: "insp-markers" });
    row.hint = el("p", { class: "insp-hint", role: "status", hidden: true });
    row.err = el("p", { class: "insp-error", id: `${id}-err`, hidden: true });
    row.edited = el("span", { class: "insp-edited", hidden: true },
      el("span", { html: icon("pencil") }), el("span", { text: "Edited" }));
    const head = el("div", { class: "insp-row-head" }, label, type, row.edited, row.markers);
    const body = kind === "boolean"
      ? el("div", { class: "insp-check-wrap" }, input,
        el("span", { class: "insp-check-text", "aria-hidden": "true" }))
      : input;
    row.el = el("div", { class: `insp-row type-${kind}`, "data-field": f.name,
      "data-label": f.label }, head, body, row.hint, row.err);
    const onEdit = () => {
      if (!row.dirty) row.base = this.valueOf(f);
      row.error = "";
      this.syncRow(row);
      this.syncDirty();
    };
    input.addEventListener(kind === "boolean" || kind === "enum" || kind === "entity_ref"
      ? "change" : "input", onEdit);
    if (kind === "date" || kind === "datetime") input.addEventListener("change", onEdit);
    // the label's hover names who last changed the field (the same answer as the grid's)
    row.el.addEventListener("pointerenter", () => this.hoverLastChange(row));
    return row;
  }

  valueOf(f) {
    return this.rec ? this.rec.values[f.name] ?? null : null;
  }

  async hoverLastChange(row) {
    if (!this.id || row.titled === this.rec) return;
    row.titled = this.rec;
    const info = await this.lastChange(this.id, row.field.name);
    if (!info) return;
    row.el.querySelector(".insp-label").title = `Last changed by ${info.who} · ${ago(info.at)}`;
  }

  /** Bring one row up to date with the record, keeping the user's draft. */
  patchRow(row) {
    const f = row.field;
    const v = this.valueOf(f);
    if (row.dirty) {
      let draft;
      try {
        draft = row.parse();
      } catch {
        draft = undefined;
      }
      if (draft !== undefined && same(draft, v)) {
        row.dirty = false; // what the user typed is what the record holds now
      } else if (!same(v, row.base)) {
        const shown = v === null ? "empty" : quoted(F.displayText(f, v));
        row.hint.hidden = false;
        row.hint.replaceChildren(el("span", { html: icon("warning") }),
          el("span", { text: ` Changed elsewhere to ${shown}. Save keeps yours; Revert takes ` +
            "theirs." }));
      }
    }
    if (!row.dirty) {
      row.hint.hidden = true;
      row.show(v);
    }
    const rec = this.rec;
    const conflicted = (rec.conflicts || []).includes(f.name);
    const staged = (rec.staged || []).includes(f.name);
    const drifted = (rec.drifted || []).includes(f.name);
    row.markers.replaceChildren();
    if (conflicted) {
      const b = el("button", { type: "button", class: "btn btn-ghost btn-sm insp-resolve",
        "aria-label": `Conflict · Resolve the conflict on ${f.label}`,
        title: "People changed this at the same time; this value is provisional until " +
          "someone picks one" },
      el("span", { html: icon("warning") }), el("span", { text: "Conflict · Resolve…" }));
      b.addEventListener("click", () => this.ctx.resolveConflict?.(this.id, f));
      row.markers.append(b);
    }
    if (staged) {
      row.markers.append(el("span", { class: "tag tag-accent insp-staged",
        title: "Staged change, not committed yet" },
      el("span", { html: icon("pencil") }), el("span", { text: "Staged" })));
    }
    if (drifted) {
      const b = el("button", { type: "button", class: "btn btn-ghost btn-sm insp-drift",
        "aria-label": `Changed while you were staging: ${f.label}. Decide…` },
      el("span", { html: icon("drift") }), el("span", { text: "Changed · Decide…" }));
      b.addEventListener("click", () => this.ctx.openDrift?.(this.id, f));
      row.markers.append(b);
    }
    row.el.classList.toggle("conflicted", conflicted);
    row.el.classList.toggle("staged", staged);
    this.syncRow(row);
  }

  /** Dirty flag, "Edited" mark and inline error of one row. */
  syncRow(row) {
    let dirty;
    try {
      dirty = !same(row.parse(), this.valueOf(row.field));
    } catch {
      dirty = true; // unreadable text is a change the Save will explain
    }
    row.dirty = dirty;
    if (!dirty) {
      row.base = undefined;
      row.hint.hidden = true;
    }
    row.edited.hidden = !row.dirty;
    row.el.classList.toggle("dirty", row.dirty);
    row.err.hidden = !row.error;
    if (row.error) {
      row.err.replaceChildren(el("span", { html: icon("error") }),
        el("strong", { text: " Not saved: " }), document.createTextNode(row.error));
      row.input.setAttribute("aria-invalid", "true");
      row.input.setAttribute("aria-describedby", `${row.id}-type ${row.err.id}`);
    } else {
      row.input.removeAttribute("aria-invalid");
      row.input.setAttribute("aria-describedby", `${row.id}-type`);
    }
  }

  dirtyRows() {
    return [...this.rows.values()].filter((r) => r.dirty);
  }

  syncDirty() {
    const n = this.dirtyRows().length;
    this.saveBtn.disabled = n === 0;
    this.revertBtn.disabled = n === 0;
    this.saveBtn.textContent = n > 1 ? `Save ${n} changes` : "Save";
    this.dirtyNote.textContent = n ? (n === 1 ? "1 unsaved change" : `${n} unsaved changes`) : "";
  }

  /** Link fields: a menu of the target table's records (grid's record picker, as a select). */
  fillLinkSelect(row, v) {
    const sel = row.input;
    const f = row.field;
    const target = f.options && f.options.ref_table;
    const key = JSON.stringify([v, row.choicesLoaded || 0]);
    if (sel.dataset.shown === key) return;
    sel.dataset.shown = key;
    sel.replaceChildren(el("option", { value: "", text: "— none —" }));
    let found = !v;
    for (const g of row.choices || []) {
      const og = el("optgroup", { label: g.label });
      for (const it of g.items) {
        og.append(el("option", { value: it.id, text: it.label }));
        if (it.id === v) found = true;
      }
      if (g.items.length) sel.append(og);
    }
    if (!found) {
      const opt = el("option", { value: v, text: `Record …${F.shortId(v)}` });
      sel.append(opt);
      this.nameOf(v).then((n) => { opt.textContent = n.name; });
    }
    sel.value = v ?? "";
    if (!row.choicesLoading) {
      row.choicesLoading = true;
      const tables = target ? [this.ctx.tableById(target)].filter(Boolean) : this.ctx.tables();
      Promise.all(tables.map(async (t) => ({
        label: t.label,
        items: (await this.records(t.id)).filter((r) => r.id !== this.id)
          .map((r) => ({ id: r.id, label: this.ctx.recordLabel(t, r) })),
      }))).then((groups) => {
        row.choices = groups;
        row.choicesLoaded = (row.choicesLoaded || 0) + 1;
        if (!row.dirty && row.input.isConnected) this.fillLinkSelect(row, this.valueOf(f));
      }).catch(() => { row.choicesLoading = false; });
    }
  }

  records(tableId) {
    if (!this.recordsOf.has(tableId)) {
      const p = this.api.get("/records/list", { table: tableId }).then((r) => r.records);
      p.catch(() => this.recordsOf.delete(tableId));
      this.recordsOf.set(tableId, p);
    }
    return this.recordsOf.get(tableId);
  }

  /** Save every changed field as ONE `/records/update` (one undo step; J6). */
  async save() {
    if (!this.isOpen || !this.rec || this.saving) return;
    const dirty = this.dirtyRows();
    if (!dirty.length) return;
    const byTable = new Map();
    let bad = null;
    for (const row of dirty) {
      let v;
      try {
        v = row.parse();
      } catch (err) {
        row.error = err.message;
        this.syncRow(row);
        bad = bad || row;
        continue;
      }
      if (!byTable.has(row.table.id)) byTable.set(row.table.id, {});
      byTable.get(row.table.id)[row.field.name] = v;
    }
    if (bad) {
      bad.input.focus();
      this.ctx.announce?.(`${bad.field.label} was not saved: ${bad.error}`);
      return;
    }
    const updates = [...byTable].map(([table, values]) => ({ id: this.id, table, values }));
    const id = this.id;
    this.saving = true;
    this.saveBtn.disabled = true;
    this.formError.hidden = true;
    try {
      const r = await this.ctx.commit(updates);
      if (this.id !== id) return;
      for (const row of dirty) row.error = "";
      this.ctx.announce?.(dirty.length === 1 ? `Saved ${dirty[0].field.label}`
        : `Saved ${dirty.length} changes`);
      await this.reload(r && r.seq);
    } catch (err) {
      if (this.id !== id) return;
      const msg = err.message || String(err);
      const culprit = err.details && err.details.field
        ? dirty.find((r) => r.field.name === err.details.field) : null;
      if (culprit) {
        culprit.error = msg;
        this.syncRow(culprit);
      }
      this.formError.hidden = false;
      this.formError.replaceChildren(el("span", { html: icon("error") }),
        el("strong", { text: " Not saved: " }), document.createTextNode(msg));
      this.ctx.announce?.(`Not saved: ${msg}`);
    } finally {
      this.saving = false;
      if (this.isOpen) this.syncDirty();
    }
  }

  revert() {
    for (const row of this.rows.values()) {
      row.dirty = false;
      row.base = undefined;
      row.error = "";
      if (row.field.type === "entity_ref") delete row.input.dataset.shown;
    }
    this.formError.hidden = true;
    if (this.rec) this.renderFields();
    this.ctx.announce?.("Changes reverted");
  }

  // --- links (J7) -------------------------------------------------------------------------

  types() {
    if (!this.edgeTypes) {
      this.edgeTypes = this.api.get("/edge-types/list").then((r) => r.edge_types || []);
      this.edgeTypes.catch(() => { this.edgeTypes = null; });
    }
    return this.edgeTypes;
  }

  /** {name, tables} of a record (its first text value), cached until it changes. */
  nameOf(id) {
    if (!this.names.has(id)) {
      const p = this.api.get(`/records/${encodeURIComponent(id)}`).then((rec) => {
        const tables = (rec.tables || []).map((t) => this.ctx.tableById(t)).filter(Boolean);
        return { name: this.ctx.recordLabel(tables[0] || null, rec), tables };
      }).catch(() => ({ name: `Deleted record …${F.shortId(id)}`, tables: [], gone: true }));
      this.names.set(id, p);
    }
    return this.names.get(id);
  }

  learn(type, side, tables) {
    if (!this.learned.has(type)) this.learned.set(type, { src: new Set(), dst: new Set() });
    for (const t of tables) this.learned.get(type)[side].add(t.id || t);
  }

  /** {name, tables} of the far end of each edge. A long list (a cue list's cues) reads the far
   * ends' table once instead of one request per record, once one far end told which table. */
  async farEnds(edges, id) {
    const side = (g) => (g.src === id ? "dst" : "src");
    const far = (g) => (g.src === id ? g.dst : g.src);
    const unknown = new Map(); // "type|side" -> the first far end
    for (const g of edges) {
      const known = this.learned.get(g.type);
      const k = `${g.type}|${side(g)}`;
      if ((!known || !known[side(g)].size) && !unknown.has(k)) unknown.set(k, g);
    }
    await Promise.all([...unknown.values()].map(async (g) => {
      const n = await this.nameOf(far(g));
      if (!n.gone) this.learn(g.type, side(g), n.tables);
    }));
    const wanted = new Set();
    for (const g of edges) for (const t of this.learned.get(g.type)?.[side(g)] || []) wanted.add(t);
    const byId = new Map();
    if (edges.length > 3) {
      await Promise.all([...wanted].map(async (tid) => {
        const t = this.ctx.tableById(tid);
        if (!t) return;
        for (const r of await this.records(tid).catch(() => [])) {
          if (!byId.has(r.id)) byId.set(r.id, { name: this.ctx.recordLabel(t, r), tables: [t] });
        }
      }));
    }
    return Promise.all(edges.map((g) => byId.get(far(g)) || this.nameOf(far(g))));
  }

  async renderLinks() {
    const edges = this.edges;
    const id = this.id;
    const [types, named] = await Promise.all([
      this.types().catch(() => []),
      this.farEnds(edges, id),
    ]);
    if (this.id !== id || this.edges !== edges) return;
    const typeOf = new Map(types.map((t) => [t.type, t]));
    const mine = this.tablesOfRec();
    const groups = new Map();
    edges.forEach((g, i) => {
      const out = g.src === id;
      const other = named[i];
      this.learn(g.type, out ? "src" : "dst", mine);
      if (!other.gone) this.learn(g.type, out ? "dst" : "src", other.tables);
      const key = `${out ? "out" : "in"}|${g.type}`;
      if (!groups.has(key)) {
        const label = (typeOf.get(g.type) || {}).label || g.type;
        groups.set(key, { label, out, items: [] });
      }
      groups.get(key).items.push({ g, other, otherId: out ? g.dst : g.src });
    });
    const focused = this.linkList.contains(document.activeElement)
      ? document.activeElement.dataset.focusKey : null;
    this.linkList.replaceChildren();
    if (!edges.length) {
      this.linkList.append(el("p", { class: "muted insp-empty", text: "No links yet." }));
    }
    for (const grp of groups.values()) {
      const heading = grp.out ? `${grp.label} →` : `← ${grp.label}`;
      const ul = el("ul", { class: "insp-link-list", "aria-label": heading });
      for (const { g, other, otherId } of grp.items) {
        const said = grp.out ? `${grp.label}: ${other.name}` : `${other.name} ${grp.label} this`;
        const open = el("button", { type: "button", class: "insp-link-open",
          "data-focus-key": `open|${g.id}`, title: `Open ${other.name}`,
          "aria-label": `Open ${other.name} (${said})` },
        el("span", { html: icon("link") }), el("span", { text: other.name }));
        open.addEventListener("click", () => this.open(otherId));
        const rm = el("button", { type: "button", class: "btn btn-danger-ghost btn-sm insp-unlink",
          "data-focus-key": `rm|${g.id}`, "aria-label": `Remove link: ${said}` }, "Remove");
        rm.addEventListener("click", () => this.removeLink(g, said));
        const props = propsText(g.props);
        const where = other.tables.map((t) => t.label).join(" · ");
        ul.append(el("li", { class: "insp-link", "data-edge": g.id },
          el("span", { class: "insp-link-main" }, open,
            where ? el("span", { class: "insp-link-table muted", text: where }) : "",
            props ? el("span", { class: "insp-link-props", text: props }) : ""),
          rm));
      }
      this.linkList.append(el("div", { class: "insp-link-group" },
        el("h4", { class: "insp-link-h", text: heading }), ul));
    }
    if (focused) this.linkList.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
  }

  async removeLink(g, said) {
    try {
      const r = await this.api.post("/edges/delete", { id: g.id });
      this.ctx.announce?.(`Link removed: ${said}`);
      this.ctx.refreshAfter?.(r.seq);
      await this.reload(r.seq);
      this.addLinkBtn.focus();
    } catch (err) {
      this.ctx.toast?.(`Couldn't remove the link: ${err.message}`, { kind: "error" });
    }
  }

  /** Which tables the far end of a new link of type `et` may come from (side "src"/"dst"),
   * learnt from links seen (this record's, or one of that type anywhere). */
  async allowedTables(et, side) {
    const end = side === "src" ? et.from : et.to; // a module's relationship names its tables
    if (end) return this.ctx.tables().filter((t) => t.id === end);
    let known = this.learned.get(et.type);
    if (!known || !known[side].size) {
      // nothing seen yet: look at one existing link of this type anywhere
      try {
        const all = (await this.api.get("/edges/list", { type: et.type })).edges || [];
        if (all.length) {
          const [s, d] = await Promise.all([this.nameOf(all[0].src), this.nameOf(all[0].dst)]);
          this.learn(et.type, "src", s.tables);
          this.learn(et.type, "dst", d.tables);
        }
      } catch {
        // fall back to the module's tables below
      }
      known = this.learned.get(et.type);
    }
    const tables = this.ctx.tables();
    if (known && known[side].size) return tables.filter((t) => known[side].has(t.id));
    // the engine does not say which tables a relationship joins: every table, the
    // relationship's own module's first (a cue list for "In cue list"), searchable by name
    const module = et.type.includes(".") ? et.type.split(".")[0] : null;
    return [...tables.filter((t) => t.module === module),
      ...tables.filter((t) => t.module !== module)];
  }

  /** The relationships this record can take part in: [{et, dir, text, ours}] (dir "out": this
   * record is the link's source). `ours`: known to fit this record's tables (from links seen),
   * or from the module of one of its tables; the others are offered after them. */
  async linkChoices() {
    const types = await this.types();
    const tables = this.tablesOfRec();
    const mine = new Set(tables.map((t) => t.id));
    const out = [];
    for (const et of types) {
      const known = this.learned.get(et.type);
      const both = (ours) => [{ et, dir: "out", text: `${et.label} → …`, ours },
        { et, dir: "in", text: `… ${et.label} → this record`, ours }];
      if (et.from) {
        // the engine says which tables it joins: offer only the directions that fit
        const fit = both(true).filter((c) => c.dir === "out" ? mine.has(et.from)
          : !et.to || mine.has(et.to));
        out.push(...fit);
      } else if (known && known.src.size && known.dst.size) {
        const fit = both(true).filter((c) =>
          [...known[c.dir === "out" ? "src" : "dst"]].some((t) => mine.has(t)));
        out.push(...(fit.length ? fit : both(false)));
      } else {
        const module = et.type.split(".")[0];
        out.push(...both(tables.some((t) => t.module === module)));
      }
    }
    return [...out.filter((c) => c.ours), ...out.filter((c) => !c.ours)];
  }

  async openPicker() {
    if (this.picker) {
      this.picker.search?.focus();
      return;
    }
    const n = this.n;
    const choices = await this.linkChoices().catch((err) => {
      this.ctx.toast?.(`Couldn't load the relationship types: ${err.message}`, { kind: "error" });
      return null;
    });
    if (!choices || !this.isOpen) return;
    const p = { choices, candidates: [], shown: [], active: -1, seq: 0 };
    this.picker = p;
    this.addLinkBtn.setAttribute("aria-expanded", "true");
    const box = el("div", { class: "insp-picker", role: "group", "aria-label": "Add a link" });
    if (!choices.length) {
      box.append(el("p", { class: "muted", text: "There are no relationship types in this " +
        "workspace yet. Adopting a module (for example Lighting Cues) adds some." }));
      const done = el("button", { type: "button", class: "btn btn-secondary btn-sm",
        text: "Close" });
      done.addEventListener("click", () => this.closePicker(true));
      box.append(done);
      this.pickerHost.replaceChildren(box);
      done.focus();
      return;
    }
    const typeSel = el("select", { class: "input", id: `insp-lt-${n}` });
    const opt = (c) => el("option", { value: String(choices.indexOf(c)), text: c.text });
    const ours = choices.filter((c) => c.ours);
    const others = choices.filter((c) => !c.ours);
    if (ours.length && others.length) {
      typeSel.append(el("optgroup", { label: "For this record" }, ...ours.map(opt)),
        el("optgroup", { label: "Other relationships" }, ...others.map(opt)));
    } else {
      typeSel.append(...choices.map(opt));
    }
    const propsBox = el("div", { class: "insp-picker-props" });
    const search = el("input", { type: "text", class: "input", id: `insp-ls-${n}`,
      role: "combobox", "aria-autocomplete": "list", "aria-expanded": "true",
      "aria-controls": `insp-lb-${n}`, autocomplete: "off", placeholder: "Type to find a record" });
    const list = el("ul", { class: "insp-options", role: "listbox", id: `insp-lb-${n}`,
      "aria-label": "Records" });
    const note = el("p", { class: "muted insp-picker-note", "aria-live": "polite" });
    const error = el("p", { class: "insp-form-error", role: "alert", hidden: true });
    const cancel = el("button", { type: "button", class: "btn btn-secondary btn-sm",
      text: "Cancel" });
    cancel.addEventListener("click", () => this.closePicker(true));
    box.append(
      el("label", { class: "label", for: typeSel.id, text: "Relationship" }), typeSel, propsBox,
      el("label", { class: "label", for: search.id, text: "Record to link" }), search, list,
      note, error, el("div", { class: "insp-actions" }, cancel));
    Object.assign(p, { box, typeSel, propsBox, search, list, note, error });
    this.pickerHost.replaceChildren(box);
    box.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault(); // the panel stays open; only the picker closes
        e.stopPropagation();
        this.closePicker(true);
      }
    });
    typeSel.addEventListener("change", () => this.pickerType());
    search.addEventListener("input", () => this.filterPicker());
    search.addEventListener("keydown", (e) => this.pickerKey(e));
    list.addEventListener("mousedown", (e) => e.preventDefault()); // keep focus in the box
    list.addEventListener("click", (e) => {
      const li = e.target.closest("[role=option]");
      if (li) this.pick(Number(li.dataset.index));
    });
    await this.pickerType();
    search.focus();
  }

  closePicker(refocus = false) {
    if (!this.picker) return;
    this.picker = null;
    this.pickerHost?.replaceChildren();
    this.addLinkBtn?.setAttribute("aria-expanded", "false");
    if (refocus) this.addLinkBtn?.focus();
  }

  currentChoice() {
    const p = this.picker;
    return p ? p.choices[Number(p.typeSel.value)] : null;
  }

  async pickerType() {
    const p = this.picker;
    const c = this.currentChoice();
    if (!c) return;
    const seq = ++p.seq;
    p.propsBox.replaceChildren();
    p.props = [];
    for (const [name, ftype] of Object.entries(c.et.props || {})) {
      const id = `insp-lp-${this.n}-${name}`.replace(/[^a-zA-Z0-9_-]/g, "_");
      const input = el("input", { type: "text", class: "input", id, autocomplete: "off" });
      const label = name.replace(/_/g, " ");
      p.props.push({ name, ftype, input, label });
      p.propsBox.append(el("label", { class: "label", for: id,
        text: `${label[0].toUpperCase()}${label.slice(1)} (optional)` }), input);
    }
    p.note.textContent = "Loading records…";
    const tables = await this.allowedTables(c.et, c.dir === "out" ? "dst" : "src");
    const lists = await Promise.all(tables.map((t) => this.records(t.id).catch(() => [])));
    if (this.picker !== p || p.seq !== seq) return;
    const several = tables.length > 1;
    p.candidates = [];
    tables.forEach((t, i) => {
      for (const r of lists[i]) {
        if (r.id === this.id) continue;
        const name = this.ctx.recordLabel(t, r);
        p.candidates.push({ id: r.id, name, table: several ? t.label : "",
          hay: `${name} ${t.label}`.toLowerCase() });
      }
    });
    this.filterPicker();
  }

  filterPicker() {
    const p = this.picker;
    if (!p) return;
    const words = p.search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const hits = p.candidates.filter((c) => words.every((w) => c.hay.includes(w)));
    p.shown = hits.slice(0, PICKER_MAX);
    p.active = p.shown.length ? 0 : -1;
    p.list.replaceChildren();
    p.shown.forEach((c, i) => {
      p.list.append(el("li", { role: "option", id: `insp-opt-${this.n}-${i}`,
        class: "insp-option", "data-index": String(i), "aria-selected": "false" },
      el("span", { class: "insp-option-name", text: c.name }),
      c.table ? el("span", { class: "muted", text: ` · ${c.table}` }) : ""));
    });
    p.note.textContent = !p.candidates.length ? "No records to link to yet."
      : !hits.length ? "No matching records."
        : hits.length > p.shown.length ? `${hits.length} records match; type to narrow them.`
          : hits.length === 1 ? "1 record. Enter links it." : `${hits.length} records`;
    this.syncActive();
  }

  syncActive() {
    const p = this.picker;
    [...p.list.children].forEach((li, i) => {
      const on = i === p.active;
      li.setAttribute("aria-selected", on ? "true" : "false");
      li.classList.toggle("active", on);
      if (on) li.scrollIntoView({ block: "nearest" });
    });
    if (p.active >= 0) {
      p.search.setAttribute("aria-activedescendant", `insp-opt-${this.n}-${p.active}`);
    }
    else p.search.removeAttribute("aria-activedescendant");
  }

  pickerKey(e) {
    const p = this.picker;
    if (!p) return;
    const last = p.shown.length - 1;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (last < 0) return;
      p.active = e.key === "ArrowDown" ? Math.min(last, p.active + 1) : Math.max(0, p.active - 1);
      this.syncActive();
    } else if (e.key === "Home" && e.ctrlKey) {
      p.active = last >= 0 ? 0 : -1;
      this.syncActive();
    } else if (e.key === "Enter") {
      e.preventDefault();
      e.stopPropagation(); // not the app's Ctrl+Enter, not a form submit
      if (p.active >= 0) this.pick(p.active);
    }
  }

  async pick(i) {
    const p = this.picker;
    const c = this.currentChoice();
    const target = p && p.shown[i];
    if (!target || !c || p.busy) return;
    const props = {};
    for (const pr of p.props) {
      if (pr.input.value.trim() === "") continue;
      try {
        props[pr.name] = F.parseInput({ type: pr.ftype, label: pr.label }, pr.input.value);
      } catch (err) {
        p.error.hidden = false;
        p.error.textContent = `${pr.label}: ${err.message}`;
        pr.input.focus();
        return;
      }
    }
    const body = { type: c.et.type, src: c.dir === "out" ? this.id : target.id,
      dst: c.dir === "out" ? target.id : this.id };
    if (Object.keys(props).length) body.props = props; // ordered types append at the end
    p.busy = true;
    p.error.hidden = true;
    try {
      const r = await this.api.post("/edges/create", body);
      const said = c.dir === "out" ? `${c.et.label}: ${target.name}`
        : `${target.name} ${c.et.label} this`;
      this.ctx.announce?.(`Linked — ${said}`);
      this.ctx.refreshAfter?.(r.seq);
      this.closePicker(true);
      await this.reload(r.seq);
    } catch (err) {
      if (this.picker !== p) return;
      p.busy = false;
      p.error.hidden = false;
      p.error.replaceChildren(el("span", { html: icon("error") }),
        document.createTextNode(` Not linked: ${err.message}`));
    }
  }

  // --- attachments (J9) -------------------------------------------------------------------

  fileFields() {
    const out = [];
    for (const t of this.tablesOfRec()) {
      for (const f of t.fields) if (f.type === "blob_ref") out.push({ table: t, field: f });
    }
    return out;
  }

  renderFiles() {
    const files = this.ctx.files;
    const fields = this.rec ? this.fileFields() : [];
    this.filesSec.hidden = !fields.length || !files;
    if (this.filesSec.hidden) return;
    const focusKey = this.fileList.contains(document.activeElement)
      ? document.activeElement.dataset.focusKey : null;
    const name = this.name();
    this.fileList.replaceChildren();
    for (const { table, field: f } of fields) {
      const v = this.valueOf(f);
      const k = `${this.id}|${f.name}`;
      const cell = files.cell(f, v, k, name);
      // the grid's roving focus gives these tabindex -1; here they are ordinary buttons
      for (const b of [cell, ...cell.querySelectorAll("button")]) {
        if (b.tagName !== "BUTTON") continue;
        b.removeAttribute("tabindex");
        b.dataset.focusKey = `${f.name}|${b.classList[0]}`; // not its state classes
      }
      const uploading = files.uploads && files.uploads.has(k);
      const actions = el("span", { class: "insp-file-actions" });
      if (!uploading && v) {
        const replace = el("button", { type: "button", class: "btn btn-ghost btn-sm",
          "data-focus-key": `${f.name}|replace`, "aria-label": `Replace the file in ${f.label}` },
        "Replace…");
        replace.addEventListener("click", () => this.pickFile(f));
        const detach = el("button", { type: "button", class: "btn btn-danger-ghost btn-sm",
          "data-focus-key": `${f.name}|detach`, "aria-label": `Remove the file from ${f.label}` },
        "Remove");
        detach.addEventListener("click", () => this.detach(table, f));
        actions.append(replace, detach);
      }
      const err = this.uploadErrors.get(f.name);
      const row = el("div", { class: "insp-file", "data-field": f.name },
        el("div", { class: "insp-label", text: f.label }),
        el("div", { class: "insp-file-drop", title: "Drop a file here to attach it" }, cell),
        actions,
        err ? el("p", { class: "insp-error" }, el("span", { html: icon("error") }),
          el("strong", { text: " Not saved: " }), document.createTextNode(err)) : "");
      const drop = row.querySelector(".insp-file-drop");
      drop.addEventListener("dragover", (e) => {
        if (!hasFiles(e)) return;
        e.preventDefault();
        e.dataTransfer.dropEffect = "copy";
        drop.classList.add("drop-over");
      });
      drop.addEventListener("dragleave", (e) => {
        if (!e.relatedTarget || !drop.contains(e.relatedTarget)) {
          drop.classList.remove("drop-over");
        }
      });
      drop.addEventListener("drop", (e) => {
        drop.classList.remove("drop-over");
        if (!hasFiles(e)) return;
        e.preventDefault();
        const list = [...(e.dataTransfer.files || [])];
        if (!list.length) return;
        if (list.length > 1) {
          this.ctx.announce?.(`A file field holds one file: attaching ${list[0].name} only`);
        }
        this.uploadFile(f, list[0]);
      });
      drop.addEventListener("click", (e) => this.onFileClick(e, f));
      this.fileList.append(row);
    }
    if (focusKey) {
      this.fileList.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`)?.focus();
    }
  }

  onFileClick(e, f) {
    const files = this.ctx.files;
    const b = e.target.closest(".file-attach, .file-open, .file-cancel");
    if (!b) return;
    if (b.classList.contains("file-attach")) this.pickFile(f);
    else if (b.classList.contains("file-cancel")) files.cancel(`${this.id}|${f.name}`);
    else files.open(b.dataset.hash, f, this.name());
  }

  pickFile(f) {
    const files = this.ctx.files;
    this.uploadErrors.delete(f.name);
    const id = this.id;
    const picker = files.picker;
    if (picker) {
      picker.addEventListener("change", () => setTimeout(() => this.watchUpload(id, f)),
        { once: true });
    }
    files.pick(id, f);
  }

  uploadFile(f, file) {
    this.uploadErrors.delete(f.name);
    this.ctx.files.upload(this.id, f, file);
    this.watchUpload(this.id, f);
  }

  /** Follow an upload started here: progress in the panel, its refusal explained in it. */
  watchUpload(id, f) {
    const files = this.ctx.files;
    const k = `${id}|${f.name}`;
    const up = files.uploads && files.uploads.get(k);
    if (!up || this.id !== id) return;
    up.xhr.addEventListener("loadend", () => {
      if (this.id !== id) return;
      const xhr = up.xhr;
      if (xhr.status !== 200 && xhr.readyState === 4 && xhr.status !== 0) {
        let msg = `the engine answered ${xhr.status}`;
        try {
          const e = JSON.parse(xhr.responseText).error || {};
          if (e.code === "blob_too_large" || xhr.status === 413) {
            msg = `“${up.name}” is too large to attach.`;
          } else if (e.message) msg = e.message;
        } catch {
          // keep the status
        }
        this.uploadErrors.set(f.name, msg);
      }
      this.renderFiles();
    });
    let drawn = 0;
    const tick = (now = performance.now()) => {
      this.uploadWatch.delete(k);
      if (this.id !== id) return;
      if (now - drawn > 120) { // progress a few times a second is plenty
        drawn = now;
        this.renderFiles();
      }
      if (files.uploads.get(k) === up) this.uploadWatch.set(k, requestAnimationFrame(tick));
      else this.renderFiles();
    };
    cancelAnimationFrame(this.uploadWatch.get(k));
    tick();
  }

  async detach(table, f) {
    try {
      const r = await this.ctx.commit([{ id: this.id, table: table.id,
        values: { [f.name]: null } }]);
      this.ctx.announce?.(`Removed the file from ${f.label}`);
      await this.reload(r && r.seq);
    } catch (err) {
      this.uploadErrors.set(f.name, err.message || String(err));
      this.renderFiles();
    }
  }

  // --- history (J6: "a history drawer lists older values") ---------------------------------

  toggleHistory() {
    this.history.open = !this.history.open;
    this.showHistoryBody(this.history.open);
    if (this.history.open) this.loadHistory({ reset: true });
  }

  showHistoryBody(open) {
    this.histToggle.setAttribute("aria-expanded", open ? "true" : "false");
    this.histBody.hidden = !open;
    if (open && !this.histBody.firstChild) {
      const id = `insp-hf-${this.n}`;
      this.histFilter = el("select", { class: "input insp-hist-filter", id });
      this.histFilter.addEventListener("change", () => {
        this.history.field = this.histFilter.value;
        this.loadHistory({ reset: true });
      });
      this.histList = el("ol", { class: "insp-history", "aria-label": "Changes, newest first" });
      this.histNote = el("p", { class: "muted insp-hist-note", role: "status" });
      this.histMore = el("button", { type: "button", class: "btn btn-secondary btn-sm",
        text: "Show more", hidden: true });
      this.histMore.addEventListener("click", () => this.loadHistory({ more: true }));
      this.histBody.append(el("label", { class: "label", for: id, text: "Show changes to" }),
        this.histFilter, this.histList, this.histNote, this.histMore);
      this.renderHistoryFilter();
    }
  }

  renderHistoryFilter() {
    if (!this.histFilter) return;
    const keep = this.history.field;
    const opts = [["", "All fields"]];
    const seen = new Set();
    for (const t of this.tablesOfRec()) {
      for (const f of t.fields) {
        if (seen.has(f.name)) continue;
        seen.add(f.name);
        opts.push([f.name, f.label]);
      }
    }
    const sig = JSON.stringify(opts);
    if (this.histFilter.dataset.sig !== sig) {
      this.histFilter.dataset.sig = sig;
      this.histFilter.replaceChildren(...opts.map(([v, t]) => el("option", { value: v, text: t })));
    }
    this.histFilter.value = seen.has(keep) ? keep : "";
  }

  async loadHistory({ reset = false, more = false } = {}) {
    const h = this.history;
    const id = this.id;
    if (!id || !this.histList) return;
    const q = { field: h.field || undefined };
    if (more && h.next) {
      q.before = h.next;
      q.limit = HISTORY_PAGE;
    } else {
      // a refresh keeps as many entries as were shown
      q.limit = Math.min(HISTORY_MAX, Math.max(HISTORY_PAGE, reset ? 0 : h.entries.length));
    }
    if (this.seq) q.after = this.seq;
    const ticket = (h.ticket = (h.ticket || 0) + 1);
    const generation = this.changes.get(id) || 0;
    h.loading = true;
    this.histNote.textContent = "Loading…";
    try {
      const r = await this.api.get(`/records/${encodeURIComponent(id)}/history`, q);
      if (this.id !== id || h.ticket !== ticket) return;
      h.entries = more ? [...h.entries, ...(r.entries || [])] : (r.entries || []);
      h.next = r.next || null;
      h.error = "";
      if (!more && generation === (this.changes.get(id) || 0)) this.noteLastChanges(id, h.entries);
    } catch (err) {
      if (this.id !== id || h.ticket !== ticket) return;
      h.error = err.message || String(err);
    } finally {
      if (h.ticket === ticket) h.loading = false;
    }
    this.renderHistory();
  }

  fieldDef(tableId, name) {
    const tables = tableId ? [this.ctx.tableById(tableId)].filter(Boolean) : this.tablesOfRec();
    for (const t of [...tables, ...this.tablesOfRec()]) {
      const f = t.fields.find((x) => x.name === name);
      if (f) return f;
    }
    return null;
  }

  /** One history entry in words: "Alex changed Time from “10:30” to “10:45”" (the engine's
   * summary, or the same sentence made here). */
  entryText(e) {
    const f = e.field && !e.edge ? this.fieldDef(e.table, e.field) : null;
    // moments in this browser's time zone; files by name when this page knows it
    const local = f && (f.type === "datetime" || (f.type === "blob_ref" &&
      !F.displayText(f, e.new ?? e.old ?? "").startsWith("File …"))) &&
      ["set_field", "clear_field"].includes(e.op);
    if (e.summary && !local) return e.summary;
    const person = who(e);
    const label = e.label || (f && f.label) || e.field;
    const val = (v) => quoted(clip(f ? F.displayText(f, v) : (typeof v === "object"
      ? JSON.stringify(v) : String(v))));
    const none = (v) => v === null || v === undefined || v === "";
    if (label && ["set_field", "clear_field", "text"].includes(e.op)) {
      if (none(e.new) && !none(e.old)) return `${person} cleared ${label} (was ${val(e.old)})`;
      if (none(e.new)) return `${person} cleared ${label}`;
      if (none(e.old)) return `${person} set ${label} to ${val(e.new)}`;
      return `${person} changed ${label} from ${val(e.old)} to ${val(e.new)}`;
    }
    const verbs = { create: "created this record", delete: "deleted this record",
      restore: "restored this record", attach: "added this record to a table",
      detach: "removed this record from a table", link: "linked this record",
      unlink: "removed a link", reorder: "moved this record in a list" };
    return `${person} ${verbs[e.op] || "changed this record"}`;
  }

  renderHistory() {
    const h = this.history;
    if (!this.histList) return;
    this.histList.replaceChildren();
    for (const e of h.entries) {
      const li = el("li", { class: "insp-hist-entry" });
      const branch = e.conflict && e.conflict.branch;
      const resolution = e.kind === "resolution" || (e.conflict && e.conflict.resolution);
      if (branch) li.classList.add("conflict-branch");
      if (resolution) li.classList.add("resolution");
      li.append(el("span", { class: "insp-hist-text", text: this.entryText(e) }));
      if (branch && !resolution) {
        li.append(el("span", { class: "tag tag-warn insp-hist-tag" },
          el("span", { html: icon("warning") }), el("span", { text: "(conflicting edit)" })));
      }
      if (resolution) {
        li.append(el("span", { class: "tag insp-hist-tag" },
          el("span", { html: icon("check") }), el("span", { text: "(resolved the conflict)" })));
      }
      const kindNote = { undo: "undo", redo: "redo", import: "import", script: "script",
        rule: "rule", overlay_commit: "committed from staging" }[e.kind];
      if (kindNote) {
        li.append(el("span", { class: "muted insp-hist-kind", text: ` (${kindNote})` }));
      }
      if (typeof e.at === "number") {
        li.append(el("span", { class: "muted insp-hist-when" }, " · ",
          el("time", { datetime: new Date(e.at).toISOString(), title: F.formatDateTime(e.at),
            text: when(e.at) })));
      }
      this.histList.append(li);
    }
    this.histMore.hidden = !h.next;
    this.histNote.textContent = h.error ? `Couldn't load the history: ${h.error}`
      : h.loading ? "Loading…" : !h.entries.length ? "No changes recorded yet." : "";
  }

  // --- the grid's hover: who last changed a cell ------------------------------------------

  /** The newest entry of each field in a history page answers the hover for that field too. */
  noteLastChanges(id, entries) {
    const seen = new Set();
    for (const e of entries) {
      if (!e.field || e.edge || seen.has(e.field)) continue;
      seen.add(e.field);
      this.lastCache.set(`${id}|${e.field}`, Promise.resolve({ who: who(e), at: e.at, entry: e }));
    }
  }

  /** {who, at} of the last change to a field of a record, or null; cached until it changes. */
  lastChange(id, field) {
    const name = typeof field === "object" && field ? field.name : field;
    const k = `${id}|${name}`;
    if (!this.lastCache.has(k)) {
      const p = this.api.get(`/records/${encodeURIComponent(id)}/history`,
        { field: name, limit: 1 }).then((r) => {
        const e = (r.entries || [])[0];
        return e ? { who: who(e), at: e.at, entry: e } : null;
      }).catch(() => {
        this.lastCache.delete(k);
        return null;
      });
      this.lastCache.set(k, p);
    }
    return this.lastCache.get(k);
  }
}
