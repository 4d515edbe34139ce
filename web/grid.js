// The record grid: one table's records as rows, its fields as columns (spec 05 §3 J5/J6, §4).
//
// The grid owns presentation only. It calls its controller to write (`commit`, `addRecord`,
// `deleteRecords`) and is told the truth afterwards through `update(records)`, which patches rows
// in place (keeping scroll, the active cell and any open editor). Keyboard model (docs/ui.md):
// arrows/Tab/Home/End/PgUp/PgDn move; Enter or F2 edits; typing replaces; Enter commits and
// moves down, Tab right, Esc cancels; Space toggles a Yes/No cell; Delete clears.

import { icon } from "./icons.js";
import * as F from "./format.js";
import { announce } from "./toast.js";
import { el } from "./dom.js";

const WIDTH = {
  text: 200, longtext: 280, integer: 110, float: 120, boolean: 96, date: 150, datetime: 200,
  duration: 120, enum: 160, entity_ref: 200, blob_ref: 230,
};
const SELECT_W = 44;
const NUM_W = 52;
const ACTIONS_W = 48;
const PAGE_ROWS = 10;
const PASTE = "__paste_id__";

const key = (id, name) => `${id}|${name}`;
const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);


export class Grid {
  /**
   * @param {HTMLElement} host
   * @param {object} ctl  controller:
   *   commit(id, fieldName, value): Promise (rejects with {message} when refused)
   *   addRecord(): void;  deleteRecords(ids, {label}): void
   *   linkChoices(field): Promise<[{label, items: [{id, label}]}]>
   *   linkLabel(id): string|null;  onRows(count): void;  onSelection(ids): void
   *   files: the Files of files.js (file cells: drop, attach, preview)
   */
  constructor(host, ctl) {
    this.host = host;
    this.ctl = ctl;
    this.table = null;
    this.fields = [];
    this.cols = [];
    this.records = new Map();
    this.order = [];
    this.rowEls = new Map();
    this.active = null; // {id, col}
    this.editing = null;
    this.errors = new Map(); // key -> message
    this.freshError = null;
    this.pending = new Map(); // key -> {value, token}
    this.selected = new Set();
    this.tokens = 0;
  }

  // --- building ---------------------------------------------------------------------------

  setTable(table, records) {
    const sameTable = this.table && this.table.id === table.id;
    const scroll = this.wrap ? [this.wrap.scrollLeft, this.wrap.scrollTop] : [0, 0];
    const hadFocus = this.hasFocus();
    if (this.editing) this.commitEdit({ refocus: false });
    if (!sameTable) {
      this.active = null;
      this.errors.clear();
      this.pending.clear();
      this.selected.clear();
    }
    this.table = table;
    this.fields = table.fields;
    this.cols = [{ kind: "select" }, ...this.fields.map((f) => ({ kind: "field", field: f })),
      { kind: "actions" }];
    this.records = new Map();
    this.order = [];
    this.rowEls = new Map();
    this.build();
    this.update(records);
    if (sameTable) [this.wrap.scrollLeft, this.wrap.scrollTop] = scroll;
    if (this.active && hadFocus) this.focusActive();
  }

  build() {
    const widths = [SELECT_W, NUM_W, ...this.fields.map((f) => Math.min(360, Math.max(
      WIDTH[F.kindOf(f)] || 160, 56 + 7.5 * f.label.length))), ACTIONS_W];
    const total = widths.reduce((a, b) => a + b, 0);
    this.wrap = el("div", { class: "grid-wrap" });
    const sizer = el("div", { class: "grid-sizer" });
    sizer.style.width = `${total}px`;
    this.tableEl = el("table", {
      class: "grid", role: "grid", "aria-label": this.table.label,
      "aria-multiselectable": "true", "aria-colcount": String(this.cols.length + 1),
    });
    this.tableEl.style.width = `${total}px`;
    const colgroup = el("colgroup");
    for (const w of widths) {
      const c = el("col");
      c.style.width = `${w}px`;
      colgroup.append(c);
    }
    this.selectAll = el("input", { type: "checkbox", "aria-label": "Select all records" });
    this.selectAll.addEventListener("change", () => this.toggleAll(this.selectAll.checked));
    const headRow = el("tr", { role: "row", "aria-rowindex": "1" },
      el("th", { role: "columnheader", class: "col-select", "aria-colindex": "1" },
        this.selectAll),
      el("th", { role: "columnheader", class: "col-num", "aria-colindex": "2", title: "Row" },
        el("span", { class: "sr-only", text: "Row" })));
    this.fields.forEach((f, i) => {
      const t = F.typeName(f);
      headRow.append(el("th", {
        role: "columnheader", "aria-colindex": String(i + 3), title: `${f.label} · ${t}`,
        class: F.isNumeric(f) ? "num" : null, "data-field": f.name,
      }, typeBadge(f),
      el("span", { class: "th-label", text: f.label }),
      el("span", { class: "sr-only", text: `, ${t}` })));
    });
    headRow.append(el("th", {
      role: "columnheader", class: "col-actions", "aria-colindex": String(this.cols.length + 1),
    }, el("span", { class: "sr-only", text: "Actions" })));
    this.thead = el("thead", {}, headRow);
    this.tbody = el("tbody");
    this.tableEl.append(colgroup, this.thead, this.tbody);

    this.addBtn = el("button", { type: "button", class: "add-row" },
      el("span", { class: "add-row-plus", html: icon("plus") }),
      el("span", { text: "New record" }),
      el("kbd", { class: "add-row-kbd", text: isMac() ? "⌘ Enter" : "Ctrl+Enter" }));
    this.addBtn.addEventListener("click", () => this.ctl.addRecord());
    this.emptyNote = el("p", { class: "grid-empty", text: "No records yet." });
    sizer.append(this.tableEl, el("div", { class: "add-row-line" }, this.addBtn),
      this.emptyNote);
    this.wrap.append(sizer);
    this.host.replaceChildren(this.wrap);

    this.tableEl.addEventListener("keydown", (e) => this.onKeyDown(e));
    this.tableEl.addEventListener("mousedown", (e) => this.onMouseDown(e));
    this.tableEl.addEventListener("dblclick", (e) => this.onDblClick(e));
    this.tableEl.addEventListener("change", (e) => this.onChange(e));
    this.tableEl.addEventListener("click", (e) => this.onClick(e));
    this.tableEl.addEventListener("dragover", (e) => this.onDragOver(e));
    this.tableEl.addEventListener("dragleave", (e) => this.onDragLeave(e));
    this.tableEl.addEventListener("drop", (e) => this.onDrop(e));
  }

  // --- data -------------------------------------------------------------------------------

  /** Replace the rows with `records` (the server's order), patching what changed in place. */
  update(records) {
    const next = new Map(records.map((r) => [r.id, r]));
    const focusWasIn = this.hasFocus();
    let activeIndex = this.active ? this.order.indexOf(this.active.id) : -1;
    for (const id of this.order) {
      if (next.has(id)) continue;
      if (this.editing && this.editing.id === id) this.closeEditor();
      this.rowEls.get(id)?.remove();
      this.rowEls.delete(id);
      this.selected.delete(id);
      for (const k of [...this.errors.keys()]) if (k.startsWith(id + "|")) this.errors.delete(k);
    }
    let prev = null;
    records.forEach((rec, i) => {
      let tr = this.rowEls.get(rec.id);
      if (!tr) {
        tr = this.buildRow(rec);
        this.rowEls.set(rec.id, tr);
      } else {
        this.patchRow(tr, this.records.get(rec.id), rec);
      }
      const want = prev ? prev.nextSibling : this.tbody.firstChild;
      if (want !== tr) {
        const refocus = tr.contains(document.activeElement) ? document.activeElement : null;
        this.tbody.insertBefore(tr, want);
        if (refocus) refocus.focus({ preventScroll: true });
      }
      tr.setAttribute("aria-rowindex", String(i + 2));
      tr.querySelector(".col-num").textContent = String(i + 1);
      prev = tr;
    });
    this.records = next;
    this.order = records.map((r) => r.id);
    this.tableEl.setAttribute("aria-rowcount", String(records.length + 1));
    this.emptyNote.hidden = records.length > 0;
    if (this.active && !next.has(this.active.id)) {
      activeIndex = Math.min(Math.max(activeIndex, 0), this.order.length - 1);
      this.active = activeIndex >= 0 ? { id: this.order[activeIndex], col: this.active.col } : null;
      if (focusWasIn && !this.hasFocus() && this.active) this.focusActive();
    }
    if (!this.active && this.order.length) this.active = { id: this.order[0], col: 1 };
    this.syncTabStops();
    this.syncSelection();
    this.ctl.onRows(records.length);
  }

  buildRow(rec) {
    const tr = el("tr", { role: "row", "data-id": rec.id, "aria-selected": "false" });
    const box = el("input", {
      type: "checkbox", tabindex: "-1", class: "row-select", "aria-label": "Select record",
    });
    tr.append(el("td", { role: "gridcell", class: "col-select", "aria-colindex": "1" }, box),
      el("th", { scope: "row", role: "rowheader", class: "col-num", "aria-colindex": "2" }));
    this.fields.forEach((f, i) => {
      const td = el("td", {
        role: "gridcell", tabindex: "-1", "data-field": f.name, "data-label": f.label,
        "aria-colindex": String(i + 3), class: `cell type-${F.kindOf(f)}`,
      });
      tr.append(td);
      this.renderCell(td, rec, f);
    });
    const del = el("button", {
      type: "button", class: "row-delete", tabindex: "-1", "aria-label": "Delete record",
      title: "Delete record", html: icon("trash"),
    });
    tr.append(el("td", {
      role: "gridcell", class: "col-actions", "aria-colindex": String(this.cols.length + 1),
    }, del));
    tr._rec = rec;
    return tr;
  }

  patchRow(tr, old, rec) {
    tr._rec = rec;
    // file cells name the record in their buttons' labels
    const renamed = !!old && this.recordName(rec.id, old) !== this.recordName(rec.id, rec);
    for (const f of this.fields) {
      const was = old ? old.values[f.name] : undefined;
      const now = rec.values[f.name];
      const flagsChanged = ["conflicts", "staged", "drifted"].some((k) =>
        (old?.[k] || []).includes(f.name) !== (rec[k] || []).includes(f.name)) ||
        !same(old?._canonical?.[f.name], rec._canonical?.[f.name]);
      if (renamed && f.type === "blob_ref" && same(was, now) && !flagsChanged) {
        const td = this.cellEl(rec.id, f.name);
        if (td && !(this.editing && this.editing.key === key(rec.id, f.name))) {
          this.renderCell(td, rec, f);
        }
        continue;
      }
      if (same(was, now) && !flagsChanged) continue;
      const td = this.cellEl(rec.id, f.name);
      if (!td) continue;
      const k = key(rec.id, f.name);
      if (this.editing && this.editing.key === k) {
        this.remoteWhileEditing(rec, f, now);
        continue;
      }
      const local = this.pending.get(k);
      this.renderCell(td, rec, f);
      if (!local || !same(local.value, now)) this.flash(td);
    }
  }

  /** Re-render link chips after link labels became known. */
  refreshLinks() {
    for (const f of this.fields) {
      if (f.type !== "entity_ref") continue;
      for (const id of this.order) {
        if (this.editing && this.editing.key === key(id, f.name)) continue;
        const td = this.cellEl(id, f.name);
        if (td) this.renderCell(td, this.records.get(id), f);
      }
    }
  }

  /** Re-render the file cells showing blob `hash` (every file cell when null). */
  refreshFiles(hash = null) {
    for (const f of this.fields) {
      if (f.type !== "blob_ref") continue;
      for (const id of this.order) {
        if (hash !== null && this.valueOf(id, f.name) !== hash) continue;
        const td = this.cellEl(id, f.name);
        if (td) this.renderCell(td, this.records.get(id), f);
      }
    }
  }

  cellEl(id, name) {
    const tr = this.rowEls.get(id);
    return tr ? tr.querySelector(`td[data-field="${CSS.escape(name)}"]`) : null;
  }

  valueOf(id, name) {
    const k = key(id, name);
    if (this.pending.has(k)) return this.pending.get(k).value;
    const rec = this.records.get(id) || this.rowEls.get(id)?._rec;
    return rec ? rec.values[name] : null;
  }

  renderCell(td, rec, f) {
    const k = key(rec.id, f.name);
    const v = this.pending.has(k) ? this.pending.get(k).value : rec.values[f.name];
    const conflicted = (rec.conflicts || []).includes(f.name);
    const staged = (rec.staged || []).includes(f.name);
    const drifted = (rec.drifted || []).includes(f.name);
    const error = this.errors.get(k);
    const refocus = td.contains(document.activeElement) && document.activeElement !== td;
    td.replaceChildren();
    if (refocus) td.focus({ preventScroll: true });
    td.classList.toggle("conflicted", conflicted);
    td.classList.toggle("staged", staged);
    td.classList.toggle("drifted", drifted);
    td.classList.toggle("has-error", !!error);
    td.classList.toggle("pending", this.pending.has(k));
    td.classList.toggle("error-fresh", !!error && this.freshError === k);
    td.classList.toggle("empty-value", v === null || v === undefined);
    if (this.pending.has(k)) td.setAttribute("aria-busy", "true");
    else td.removeAttribute("aria-busy");
    const titles = [];
    const inner = el("div", { class: "cell-inner" });
    if (conflicted) {
      const msg = "Conflict: concurrent edits disagree; this is the provisional value " +
        "until someone picks one. Click the ⚠ to resolve it.";
      inner.append(el("button", {
        type: "button", tabindex: "-1", class: "marker marker-conflict",
        "aria-label": `Resolve conflict: ${f.label} of ${this.recordName(rec.id, rec)}`,
        title: "Conflict: click to resolve", html: icon("warning"),
      }));
      titles.push(msg);
    }
    inner.append(this.valueNode(f, v, rec));
    if (staged) {
      const real = rec._canonical && f.name in rec._canonical ? rec._canonical[f.name]
        : undefined;
      const realText = real === undefined ? null
        : real === null ? "empty" : `“${F.displayText(f, real)}”`;
      const msg = "Staged change, not committed yet" +
        (realText ? `. Real value: ${realText}` : "");
      inner.append(el("span", {
        class: "marker marker-staged", role: "img", "aria-label": "Staged", title: msg,
        html: icon("pencil"),
      }));
      titles.push(msg);
    }
    if (drifted) {
      inner.append(el("button", {
        type: "button", tabindex: "-1", class: "marker marker-drift",
        "aria-label": `Changed while you were staging: ${f.label} of ${this.recordName(rec.id, rec)}`,
        title: "Changed by someone else while you were staging: click to decide",
      }, el("span", { html: icon("drift") }), el("span", { class: "drift-text", text: "Changed" })));
      titles.push("Someone changed this field while you were staging; Commit waits until " +
        "you keep yours or use theirs");
    }
    if (error) {
      inner.append(el("span", {
        class: "marker marker-error", role: "img", "aria-label": "Error", title: error,
        html: icon("error"),
      }));
      titles.push(`Not saved: ${error}`);
    }
    td.append(inner);
    if (error) {
      const id = `err-${k.replace(/[^a-zA-Z0-9]/g, "_")}`;
      const side = this.nearRightEdge(td) ? " to-left" : "";
      td.append(el("div", { class: `cell-error-msg${side}`, id },
        el("strong", { text: "Not saved: " }), document.createTextNode(error)));
      td.setAttribute("aria-describedby", id);
    } else {
      td.removeAttribute("aria-describedby");
    }
    if (f.type === "text" && f.crdt && v) titles.push(String(v));
    if (titles.length) td.title = titles.join("\n");
    else td.removeAttribute("title");
  }

  /** Whether a popup under this cell would run past the visible part of the grid. */
  nearRightEdge(td) {
    const right = this.wrap.scrollLeft + this.wrap.clientWidth;
    return td.offsetLeft + 380 > right && td.offsetLeft + td.offsetWidth - 380 > 0;
  }

  valueNode(f, v, rec) {
    if (f.type === "boolean") {
      return el("input", {
        type: "checkbox", class: "bool", tabindex: "-1", checked: v === true,
        "aria-label": `${f.label}: ${v === true ? "yes" : "no"}`,
      });
    }
    if (f.type === "blob_ref") {
      return el("div", { class: "cell-value" },
        this.ctl.files.cell(f, v, key(rec.id, f.name), this.recordName(rec.id, rec)));
    }
    if (v === null || v === undefined) return el("span", { class: "cell-value" });
    if (f.type === "enum") {
      return el("span", { class: "cell-value" }, el("span", {
        class: "pill", text: F.choiceLabel(f, v),
      }));
    }
    if (f.type === "entity_ref" && typeof v === "string") {
      const label = this.ctl.linkLabel(v);
      return el("span", { class: "cell-value" }, el("span", {
        class: label ? "chip" : "chip chip-unknown", title: v,
      }, el("span", { html: icon("link") }),
      el("span", { text: label ?? `Record …${F.shortId(v)}` })));
    }
    const text = f.type === "text" && f.crdt ? String(v).split("\n")[0] +
      (String(v).includes("\n") ? " …" : "") : F.displayText(f, v);
    return el("span", {
      class: `cell-value${F.isNumeric(f) ? " num" : ""}`, text,
    });
  }

  flash(td) {
    td.classList.remove("flash");
    void td.offsetWidth;
    td.classList.add("flash");
    td.addEventListener("animationend", () => td.classList.remove("flash"), { once: true });
  }

  // --- focus and movement -----------------------------------------------------------------

  hasFocus() {
    return !!this.tableEl && this.tableEl.contains(document.activeElement);
  }

  activeTarget() {
    if (!this.active) return null;
    const tr = this.rowEls.get(this.active.id);
    if (!tr) return null;
    const col = this.cols[this.active.col];
    if (!col) return null;
    if (col.kind === "select") return tr.querySelector(".row-select");
    if (col.kind === "actions") return tr.querySelector(".row-delete");
    return this.cellEl(this.active.id, col.field.name);
  }

  syncTabStops() {
    for (const x of this.tableEl.querySelectorAll('[tabindex="0"]')) {
      x.setAttribute("tabindex", "-1");
      x.classList.remove("active");
      x.closest("td")?.classList.remove("active");
    }
    const t = this.activeTarget();
    if (t) {
      t.setAttribute("tabindex", "0");
      (t.closest("td") || t).classList.add("active");
    }
  }

  setActive(id, col, { focus = true } = {}) {
    if (this.freshError && this.freshError !== key(id, this.cols[col]?.field?.name)) {
      const [eid, name] = this.freshError.split("|");
      this.freshError = null;
      this.cellEl(eid, name)?.classList.remove("error-fresh");
    }
    this.active = { id, col: Math.max(0, Math.min(col, this.cols.length - 1)) };
    this.syncTabStops();
    if (focus) this.focusActive();
  }

  focusActive() {
    const t = this.activeTarget();
    if (!t) return;
    t.focus({ preventScroll: true });
    t.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  /** Focus a record's first field (used after adding a record). */
  focusRecord(id) {
    if (!this.rowEls.has(id)) return;
    this.setActive(id, this.fields.length ? 1 : 0);
  }

  move(dRow, dCol) {
    if (!this.active || !this.order.length) return false;
    const r = this.order.indexOf(this.active.id);
    const nr = Math.max(0, Math.min(this.order.length - 1, r + dRow));
    const nc = Math.max(0, Math.min(this.cols.length - 1, this.active.col + dCol));
    if (nr === r && nc === this.active.col) return false;
    this.setActive(this.order[nr], nc);
    return true;
  }

  locate(target) {
    const td = target.closest("td, th");
    const tr = target.closest("tr");
    if (!td || !tr || !tr.dataset.id || !this.tbody.contains(tr)) return null;
    let col;
    if (td.classList.contains("col-select")) col = 0;
    else if (td.classList.contains("col-actions")) col = this.cols.length - 1;
    else if (td.dataset.field) col = 1 + this.fields.findIndex((f) => f.name === td.dataset.field);
    else return null;
    return { id: tr.dataset.id, col, td };
  }

  // --- events -----------------------------------------------------------------------------

  onMouseDown(e) {
    if (this.editing && this.editing.td.contains(e.target)) return;
    const at = this.locate(e.target);
    if (!at) return;
    if (this.editing) this.commitEdit({ refocus: false });
    const isControl = !!e.target.closest("input, button");
    this.setActive(at.id, at.col, { focus: !isControl });
    if (!isControl) e.preventDefault(); // keep focus on the cell, not on text selection
  }

  onDblClick(e) {
    const at = this.locate(e.target);
    if (!at || this.cols[at.col].kind !== "field") return;
    const f = this.cols[at.col].field;
    if (f.type === "boolean" || f.type === "blob_ref") return;
    this.startEdit(at.id, at.col);
  }

  onClick(e) {
    const conflict = e.target.closest(".marker-conflict");
    const drift = e.target.closest(".marker-drift");
    if (conflict || drift) {
      const at = this.locate(e.target);
      const f = at && this.cols[at.col].field;
      if (f && conflict) this.ctl.resolveConflict?.(at.id, f);
      if (f && drift) this.ctl.openDrift?.(at.id, f);
      return;
    }
    const file = e.target.closest(".file-attach, .file-open, .file-cancel");
    if (file) {
      const at = this.locate(e.target);
      const f = at && this.cols[at.col].field;
      if (!f) return;
      if (file.classList.contains("file-attach")) this.ctl.files.pick(at.id, f);
      else if (file.classList.contains("file-cancel")) this.ctl.files.cancel(key(at.id, f.name));
      else this.ctl.files.open(file.dataset.hash, f, this.recordName(at.id));
      return;
    }
    const del = e.target.closest(".row-delete");
    if (del) {
      const id = del.closest("tr").dataset.id;
      this.ctl.deleteRecords([id], { label: this.recordName(id) });
    }
  }

  onChange(e) {
    const t = e.target;
    if (t.classList.contains("row-select")) {
      const id = t.closest("tr").dataset.id;
      if (t.checked) this.selected.add(id);
      else this.selected.delete(id);
      this.syncSelection();
    } else if (t.classList.contains("bool")) {
      const at = this.locate(t);
      if (at) this.sendEdit(at.id, this.cols[at.col].field, t.checked);
    }
  }

  // --- dropping files on file cells (J9) -----------------------------------------------

  fileCellAt(e) {
    if (!e.dataTransfer || ![...(e.dataTransfer.types || [])].includes("Files")) return null;
    const at = this.locate(e.target);
    const f = at && this.cols[at.col].field;
    return f && f.type === "blob_ref" ? { ...at, field: f } : null;
  }

  onDragOver(e) {
    const at = this.fileCellAt(e);
    if (!at) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    if (this.dropTd !== at.td) {
      this.dropTd?.classList.remove("drop-over");
      this.dropTd = at.td;
      at.td.classList.add("drop-over");
    }
  }

  onDragLeave(e) {
    if (!this.dropTd || (e.relatedTarget && this.dropTd.contains(e.relatedTarget))) return;
    if (!this.dropTd.contains(e.target)) return;
    this.dropTd.classList.remove("drop-over");
    this.dropTd = null;
  }

  onDrop(e) {
    this.dropTd?.classList.remove("drop-over");
    this.dropTd = null;
    const at = this.fileCellAt(e);
    if (!at) return;
    e.preventDefault();
    const files = [...(e.dataTransfer.files || [])];
    if (!files.length) return;
    if (this.editing) this.commitEdit({ refocus: false });
    this.setActive(at.id, at.col);
    if (files.length > 1) {
      announce(`A file cell holds one file: attaching ${files[0].name} only`);
    }
    this.ctl.files.upload(at.id, at.field, files[0]);
  }

  onKeyDown(e) {
    if (this.editing) return; // the editor handles its own keys
    const at = this.locate(e.target);
    if (!at) return;
    if (this.active?.id !== at.id || this.active?.col !== at.col) this.setActive(at.id, at.col,
      { focus: false });
    const col = this.cols[at.col];
    const mod = e.ctrlKey || e.metaKey;
    const field = col.kind === "field" ? col.field : null;
    let handled = true;
    if (field && e.key === "Enter" && e.altKey && !mod) {
      // Alt+Enter: decide a conflict or a drift on this cell (docs/ui.md)
      const rec = this.records.get(at.id);
      if ((rec?.conflicts || []).includes(field.name)) this.ctl.resolveConflict?.(at.id, field);
      else if ((rec?.drifted || []).includes(field.name)) this.ctl.openDrift?.(at.id, field);
      e.preventDefault();
      e.stopPropagation();
      return;
    }
    if (field && field.type === "blob_ref" && !mod && !e.altKey &&
      (e.key === "Enter" || e.key === "F2" || e.key === " ")) {
      // a file cell has no editor: open its file, or pick one for an empty cell
      const v = this.valueOf(at.id, field.name);
      if (v) this.ctl.files.open(v, field, this.recordName(at.id));
      else this.ctl.files.pick(at.id, field);
      e.preventDefault();
      e.stopPropagation();
      return;
    }
    switch (e.key) {
      case "ArrowUp": this.move(-1, 0); break;
      case "ArrowDown": this.move(1, 0); break;
      case "ArrowLeft": this.move(0, -1); break;
      case "ArrowRight": this.move(0, 1); break;
      case "PageUp": this.move(-PAGE_ROWS, 0); break;
      case "PageDown": this.move(PAGE_ROWS, 0); break;
      case "Home":
        if (mod) this.setActive(this.order[0], this.active.col);
        else this.setActive(at.id, 0);
        break;
      case "End":
        if (mod) this.setActive(this.order[this.order.length - 1], this.active.col);
        else this.setActive(at.id, this.cols.length - 1);
        break;
      case "Tab":
        handled = this.move(0, e.shiftKey ? -1 : 1);
        break;
      case "Enter":
        if (mod || !field) { handled = false; break; }
        if (field.type === "boolean") this.toggle(at.id, field);
        else this.startEdit(at.id, at.col);
        break;
      case "F2":
        if (field && field.type !== "boolean") this.startEdit(at.id, at.col);
        break;
      case " ":
        if (!field) { handled = false; break; }
        if (field.type === "boolean") this.toggle(at.id, field);
        else this.startEdit(at.id, at.col, { text: " " });
        break;
      case "Delete":
      case "Backspace":
        if (!field) { handled = false; break; }
        if (this.valueOf(at.id, field.name) !== null) this.sendEdit(at.id, field, null);
        break;
      case "Escape":
        if (field && this.errors.has(key(at.id, field.name))) {
          this.errors.delete(key(at.id, field.name));
          this.renderCell(at.td, this.records.get(at.id), field);
        } else {
          handled = false;
        }
        break;
      default:
        if (field && field.type !== "blob_ref" && e.key.length === 1 && !mod && !e.altKey) {
          this.startEdit(at.id, at.col, { text: e.key });
        } else {
          handled = false;
        }
    }
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  }

  toggle(id, field) {
    this.sendEdit(id, field, !(this.valueOf(id, field.name) === true));
  }

  // --- selection --------------------------------------------------------------------------

  toggleAll(on) {
    this.selected = new Set(on ? this.order : []);
    this.syncSelection();
  }

  syncSelection() {
    for (const [id, tr] of this.rowEls) {
      const on = this.selected.has(id);
      tr.setAttribute("aria-selected", on ? "true" : "false");
      tr.classList.toggle("selected", on);
      const box = tr.querySelector(".row-select");
      box.checked = on;
      box.setAttribute("aria-label", `Select record ${this.recordName(id)}`);
      tr.querySelector(".row-delete").setAttribute("aria-label",
        `Delete record ${this.recordName(id)}`);
    }
    const n = this.selected.size;
    this.selectAll.checked = n > 0 && n === this.order.length;
    this.selectAll.indeterminate = n > 0 && n < this.order.length;
    this.ctl.onSelection([...this.selected]);
  }

  clearSelection() {
    this.selected.clear();
    this.syncSelection();
  }

  /** A person-readable name for a record: its first non-empty text value, else a short id. */
  recordName(id, known = null) {
    const rec = known || this.records.get(id) || this.rowEls.get(id)?._rec;
    if (rec) {
      for (const f of this.fields) {
        const v = rec.values[f.name];
        if (f.type === "text" && typeof v === "string" && v.trim()) return v.trim().split("\n")[0];
      }
    }
    const n = this.order.indexOf(id);
    return n >= 0 ? `row ${n + 1}` : `…${F.shortId(id)}`;
  }

  // --- editing ----------------------------------------------------------------------------

  startEdit(id, col, { text } = {}) {
    const c = this.cols[col];
    if (!c || c.kind !== "field") return;
    const f = c.field;
    if (f.type === "boolean" || f.type === "blob_ref") return;
    if (this.editing) this.commitEdit({ refocus: false });
    this.setActive(id, col, { focus: false });
    const td = this.cellEl(id, f.name);
    const rec = this.records.get(id);
    if (!td || !rec) return;
    const k = key(id, f.name);
    if (this.errors.delete(k)) this.renderCell(td, rec, f);
    const original = this.valueOf(id, f.name);
    const editor = this.makeEditor(f, original, text);
    this.editing = { id, key: k, field: f, td, editor, original, done: false };
    td.classList.add("editing");
    td.append(editor.root);
    editor.root.addEventListener("keydown", (e) => this.onEditorKey(e));
    editor.root.addEventListener("focusout", (e) => {
      if (this.editing?.editor !== editor || editor.switching) return;
      if (e.relatedTarget && editor.root.contains(e.relatedTarget)) return;
      this.commitEdit({ refocus: false });
    });
    editor.focus();
  }

  makeEditor(f, value, typed) {
    const kind = F.kindOf(f);
    const label = `${f.label}, editing`;
    const root = el("div", { class: `editor editor-${kind}` });
    const ed = { root, switching: false };
    const plainInput = (attrs) => {
      const input = el("input", { class: "editor-input", "aria-label": label, ...attrs });
      input.value = typed !== undefined ? typed : F.editText(f, value);
      root.append(input);
      ed.getText = () => input.value;
      ed.focus = () => {
        input.focus({ preventScroll: true });
        if (input.type === "text") input.setSelectionRange(input.value.length, input.value.length);
      };
      return input;
    };
    switch (kind) {
      case "longtext": {
        const ta = el("textarea", { class: "editor-input", "aria-label": label, rows: "5" });
        ta.value = typed !== undefined ? typed : (value ?? "");
        root.append(ta, el("div", { class: "editor-help", text: "Shift+Enter: new line" }));
        ed.getText = () => ta.value;
        ed.focus = () => {
          ta.focus({ preventScroll: true });
          ta.setSelectionRange(ta.value.length, ta.value.length);
        };
        ed.multiline = true;
        break;
      }
      case "integer":
        plainInput({ type: "text", inputmode: "numeric", class: "editor-input num" });
        break;
      case "float":
        plainInput({ type: "text", inputmode: "decimal", class: "editor-input num" });
        break;
      case "duration":
        plainInput({ type: "text", class: "editor-input num", placeholder: "h:mm:ss" });
        break;
      case "date":
        plainInput({ type: "date" });
        if (typed !== undefined) root.querySelector("input").value = F.editText(f, value);
        break;
      case "datetime":
        plainInput({ type: "datetime-local" });
        if (typed !== undefined) root.querySelector("input").value = F.editText(f, value);
        break;
      case "enum": {
        const sel = el("select", { class: "editor-input", "aria-label": label });
        sel.append(el("option", { value: "", text: "— none —" }));
        for (const c of F.choicesOf(f)) sel.append(el("option", { value: c.key, text: c.label }));
        sel.value = value ?? "";
        if (typed && typed.trim()) {
          const hit = F.choicesOf(f).find((c) => c.label.toLowerCase().startsWith(typed.toLowerCase()));
          if (hit) sel.value = hit.key;
        }
        this.commitOnPointerPick(sel);
        root.append(sel);
        ed.getText = () => sel.value;
        ed.focus = () => sel.focus({ preventScroll: true });
        break;
      }
      case "entity_ref":
        this.linkEditor(f, value, typed, ed, label);
        break;
      default:
        plainInput({ type: "text" });
    }
    return ed;
  }

  commitOnPointerPick(sel) {
    let pointer = false;
    sel.addEventListener("pointerdown", () => { pointer = true; });
    sel.addEventListener("keydown", () => { pointer = false; });
    sel.addEventListener("change", () => {
      if (pointer && sel.value !== PASTE) this.commitEdit({ refocus: true });
    });
  }

  linkEditor(f, value, typed, ed, label) {
    const root = ed.root;
    const toText = (initial) => {
      ed.switching = true;
      root.replaceChildren();
      const input = el("input", {
        type: "text", class: "editor-input mono", "aria-label": `${f.label}: record id`,
        placeholder: "Paste a record id", spellcheck: "false",
      });
      input.value = initial;
      root.append(input);
      ed.getText = () => input.value;
      ed.focus = () => {
        input.focus({ preventScroll: true });
        input.setSelectionRange(input.value.length, input.value.length);
      };
      ed.focus();
      ed.switching = false;
    };
    if (typed !== undefined) {
      root.append(el("span"));
      ed.getText = () => typed;
      ed.focus = () => toText(typed);
      return;
    }
    const sel = el("select", { class: "editor-input", "aria-label": label });
    sel.append(el("option", { value: "", text: "— none —" }));
    if (value) sel.append(el("option", { value, text: this.ctl.linkLabel(value) ?? value }));
    sel.append(el("option", { value: PASTE, text: "Paste a record id…" }));
    sel.value = value ?? "";
    sel.addEventListener("change", () => {
      if (sel.value === PASTE) toText(value ?? "");
    });
    this.commitOnPointerPick(sel);
    root.append(sel);
    ed.getText = () => sel.value;
    ed.focus = () => sel.focus({ preventScroll: true });
    this.ctl.linkChoices(f).then((groups) => {
      if (!sel.isConnected) return;
      const keep = sel.value;
      sel.replaceChildren(el("option", { value: "", text: "— none —" }));
      let found = !value;
      for (const g of groups) {
        const og = el("optgroup", { label: g.label });
        for (const it of g.items) {
          og.append(el("option", { value: it.id, text: it.label }));
          if (it.id === value) found = true;
        }
        if (g.items.length) sel.append(og);
      }
      if (!found) sel.append(el("option", { value, text: `Record …${F.shortId(value)}` }));
      sel.append(el("option", { value: PASTE, text: "Paste a record id…" }));
      sel.value = keep;
    }).catch(() => {});
  }

  onEditorKey(e) {
    const ed = this.editing;
    if (!ed) return;
    e.stopPropagation();
    const mod = e.ctrlKey || e.metaKey;
    if (e.key === "Enter" && mod) {
      e.preventDefault();
      this.commitEdit({ refocus: true });
      this.ctl.addRecord();
    } else if (e.key === "Enter" && !(ed.editor.multiline && e.shiftKey) && !e.altKey) {
      e.preventDefault();
      this.commitEdit({ move: [1, 0] });
    } else if (e.key === "Tab") {
      e.preventDefault();
      this.commitEdit({ move: [0, e.shiftKey ? -1 : 1] });
    } else if (e.key === "Escape") {
      e.preventDefault();
      this.cancelEdit();
    }
  }

  closeEditor() {
    const ed = this.editing;
    if (!ed) return null;
    this.editing = null;
    ed.done = true;
    ed.td.classList.remove("editing");
    ed.editor.root.remove();
    ed.td.querySelector(".remote-hint")?.remove();
    return ed;
  }

  cancelEdit() {
    const ed = this.closeEditor();
    if (!ed) return;
    const rec = this.records.get(ed.id);
    if (rec) this.renderCell(ed.td, rec, ed.field);
    this.focusActive();
  }

  commitEdit({ move = null, refocus = true } = {}) {
    const ed = this.editing;
    if (!ed) return;
    const text = ed.editor.getText();
    this.closeEditor();
    const rec = this.records.get(ed.id);
    if (!rec) return;
    let value;
    let parseError = null;
    try {
      value = F.parseInput(ed.field, text);
    } catch (err) {
      parseError = err.message;
    }
    if (parseError) {
      this.fail(ed.id, ed.field, parseError);
    } else if (!same(value, this.valueOf(ed.id, ed.field.name))) {
      this.sendEdit(ed.id, ed.field, value);
    } else {
      this.renderCell(ed.td, rec, ed.field);
    }
    if (move) {
      if (!this.move(move[0], move[1])) this.focusActive();
    } else if (refocus) {
      this.focusActive();
    }
  }

  remoteWhileEditing(rec, f, now) {
    const ed = this.editing;
    if (same(now, ed.original)) {
      ed.td.querySelector(".remote-hint")?.remove();
      return;
    }
    ed.remote = now;
    let hint = ed.td.querySelector(".remote-hint");
    if (!hint) {
      hint = el("div", {
        class: `remote-hint${this.nearRightEdge(ed.td) ? " to-left" : ""}`, role: "status",
      });
      ed.td.append(hint);
    }
    const shown = now === null || now === undefined ? "empty" : `“${F.displayText(f, now)}”`;
    hint.replaceChildren(el("span", { html: icon("warning") }),
      el("span", { text: ` Changed elsewhere to ${shown}. Enter saves yours; Esc keeps theirs.` }));
  }

  /** Write one cell: optimistic display, then the engine's answer (or the error, reverted). */
  async sendEdit(id, field, value) {
    const k = key(id, field.name);
    const token = ++this.tokens;
    this.errors.delete(k);
    if (this.freshError === k) this.freshError = null;
    this.pending.set(k, { value, token });
    this.rerender(id, field);
    try {
      await this.ctl.commit(id, field.name, value);
    } catch (err) {
      if (this.pending.get(k)?.token === token) this.fail(id, field, err.message || String(err));
    } finally {
      if (this.pending.get(k)?.token === token) {
        this.pending.delete(k);
        this.rerender(id, field);
      }
    }
  }

  fail(id, field, message) {
    const k = key(id, field.name);
    this.pending.delete(k);
    this.errors.set(k, message);
    this.freshError = k;
    this.rerender(id, field);
    announce(`${field.label} of ${this.recordName(id)} was not saved: ${message}`);
  }

  rerender(id, field) {
    if (this.editing && this.editing.key === key(id, field.name)) return;
    const td = this.cellEl(id, field.name);
    const rec = this.records.get(id) || this.rowEls.get(id)?._rec;
    if (td && rec) this.renderCell(td, rec, field);
  }

  /** Close an open editor, saving it (used before undo, table switch, add record). */
  flushEdit() {
    if (this.editing) this.commitEdit({ refocus: false });
  }
}

function typeBadge(f) {
  const b = F.typeBadge(f);
  return el("span", {
    class: b.icon ? "type-glyph type-icon" : "type-glyph", "aria-hidden": "true",
    text: b.glyph || null, html: b.icon ? icon(b.icon) : null,
  });
}

export function isMac() {
  return /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);
}
