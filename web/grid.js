// The record grid: one table's records as rows, its fields as columns (spec 05 §3 J5/J6/J8, §4).
//
// The grid owns presentation only. It calls its controller to write (`commit`, `pasteUpdates`,
// `reorder`, `addRecord`, `deleteRecords`) and is told the truth afterwards through
// `update(records)` / `patch(records, removedIds)` and `setView({order, columns, ordered})`,
// which patch rows in place (keeping scroll, the active cell, the selected range and rows, and
// any open editor).
//
// Virtualized: every row has the same height, so a row's position is its index times the row
// height and nothing is measured per row. Only the rows in view plus a buffer are in the DOM;
// the table's top and bottom margins stand in for the rows above and below, so the scroll height
// is right and the sticky header keeps working. Rows leaving the window are recycled for rows
// entering it. If the focused cell's row scrolls out, focus parks on the table and returns to
// the cell when its row is rendered again.
//
// Keyboard model (docs/ui.md): arrows/Tab/Home/End/PgUp/PgDn/Ctrl+Home/Ctrl+End move, Shift
// extends the selected range; Enter or F2 edits; typing replaces; Enter commits and moves down,
// Tab right, Esc cancels; Space toggles a Yes/No cell; Delete clears the range; Ctrl+C/X/V copy,
// cut and paste rectangles as spreadsheet text (clipboard.js); Shift+Enter opens the record;
// Alt+↑/↓ moves the row in an ordered list (cue stack).

import { icon } from "./icons.js";
import * as F from "./format.js";
import * as C from "./clipboard.js";
import * as api from "./api.js";
import { announce, toast } from "./toast.js";
import { el } from "./dom.js";

const WIDTH = {
  text: 200, longtext: 280, integer: 110, float: 120, boolean: 96, date: 150, datetime: 200,
  duration: 120, enum: 160, entity_ref: 200, blob_ref: 230,
};
const SELECT_W = 44;
const NUM_W = 78;
const HANDLE_W = 26;
const ACTIONS_W = 48;
const MIN_W = 60;
const MAX_W = 1200;
const RESIZE_STEP = 16;
const BUFFER = 14; // rows rendered above and below the viewport
// re-render once the viewport comes this close to the rendered rows' edge: near the buffer
// size, so a steady scroll fills a row or two each frame instead of a dozen every few frames
// (bench/ui.py: steady-scroll frame p95 ~24 ms with 3, ~18 ms with 12)
const MARGIN = 12;
const POOL_MAX = 80;
const TIP_DELAY = 450;
const PASTE = "__paste_id__";
const GRIP = '<svg class="svg-icon" viewBox="0 0 16 16" width="16" height="16" fill="currentColor" ' +
  'aria-hidden="true" focusable="false"><circle cx="6" cy="4" r="1.2"/><circle cx="10" cy="4" ' +
  'r="1.2"/><circle cx="6" cy="8" r="1.2"/><circle cx="10" cy="8" r="1.2"/><circle cx="6" ' +
  'cy="12" r="1.2"/><circle cx="10" cy="12" r="1.2"/></svg>';
const EXPAND = '<svg class="svg-icon" viewBox="0 0 16 16" width="16" height="16" fill="none" ' +
  'stroke="currentColor" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round" ' +
  'aria-hidden="true" focusable="false"><path d="M9.5 2.5h4v4M13.5 2.5 9 7M6.5 13.5h-4v-4M2.5 ' +
  '13.5 7 9"/></svg>';

const key = (id, name) => `${id}|${name}`;
const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
const sameIds = (a, b) => a === b || (!!a && !!b && a.length === b.length &&
  a.every((x, i) => x === b[i]));
const clamp = (x, lo, hi) => Math.max(lo, Math.min(hi, x));

export function defaultWidth(f) {
  return Math.min(360, Math.max(WIDTH[F.kindOf(f)] || 160, 56 + 7.5 * f.label.length));
}

/** "just now", "2 min ago", "3 h ago", "yesterday", "4 days ago", or a date. */
export function ago(ms, now = Date.now()) {
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 45) return "just now";
  if (s < 90) return "1 min ago";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  const d = Math.round(s / 86400);
  if (d === 1) return "yesterday";
  if (d < 7) return `${d} days ago`;
  return new Date(ms).toLocaleDateString(undefined, { dateStyle: "medium" });
}

const reducedMotion = () => !!window.matchMedia &&
  window.matchMedia("(prefers-reduced-motion: reduce)").matches;


export class Grid {
  /**
   * @param {HTMLElement} host
   * @param {object} ctl  controller:
   *   commit(id, fieldName, value): Promise (rejects with {message} when refused)
   *   pasteUpdates([{id, values}]): Promise — one /records/update bundle (optional)
   *   reorder(id, {after, before}): Promise — J8 ordered lists (optional)
   *   openRecord(id), lastChange(id, field): Promise<{who, at}|null> (optional)
   *   onColumnsChanged([{name, width}]) (optional)
   *   addRecord(): void;  deleteRecords(ids, {label}): void
   *   linkChoices(field): Promise<[{label, items: [{id, label}]}]>
   *   linkLabel(id): string|null;  onRows(shown, total): void;  onSelection(ids): void
   *   files: the Files of files.js (file cells: drop, attach, preview)
   */
  constructor(host, ctl) {
    this.host = host;
    this.ctl = ctl;
    this.table = null;
    this.fields = [];
    this.shown = []; // [{field, width}] visible columns in display order
    this.cols = [];
    this.records = new Map();
    this.base = []; // every record id, in the order update() gave them
    this.order = []; // the ids shown, in display order
    this.index = new Map(); // id -> position in order
    this.view = { order: null, columns: null, ordered: false, tableId: null };
    this.rowEls = new Map(); // rendered rows only
    this.pool = [];
    this.range = { start: 0, end: 0 };
    this.rowH = 36;
    this.headH = 37;
    this.viewH = 0;
    this.active = null; // {id, col}
    this.anchor = null; // the other corner of the selected range ({id, col}), null = active
    this.editing = null;
    this.errors = new Map(); // key -> message
    this.freshError = null;
    this.pending = new Map(); // key -> {value, token}
    this.selected = new Set();
    this.tokens = 0;
    this.tips = new Map(); // key -> {sig, value: {who, at}|null|Promise}
    this.lastScroll = 0;
    this.raf = 0;
    this.resizeObserver = typeof ResizeObserver === "function"
      ? new ResizeObserver((entries) => {
        for (const e of entries) this.viewH = e.contentRect.height;
        this.schedule();
      }) : null;
  }

  // --- building ---------------------------------------------------------------------------

  setTable(table, records) {
    const sameTable = this.table && this.table.id === table.id;
    if (sameTable && same(table, this.table) && this.wrap?.isConnected) {
      this.update(records); // same definition: keep the DOM (and any editor)
      return;
    }
    const scroll = this.wrap ? [this.wrap.scrollLeft, this.wrap.scrollTop] : [0, 0];
    const hadFocus = this.hasFocus();
    if (this.editing) this.commitEdit({ refocus: false });
    if (!sameTable) {
      this.active = null;
      this.anchor = null;
      this.errors.clear();
      this.pending.clear();
      this.selected.clear();
      this.tips.clear();
      if (this.view.tableId !== table.id) {
        this.view = { order: null, columns: null, ordered: false, tableId: table.id };
      }
    }
    this.table = table;
    this.fields = table.fields;
    this.records = new Map();
    this.base = [];
    this.order = [];
    this.index = new Map();
    this.computeCols();
    this.build();
    this.update(records);
    if (sameTable) {
      [this.wrap.scrollLeft, this.wrap.scrollTop] = scroll;
      this.renderRows();
    }
    if (this.active && hadFocus) this.focusActive();
  }

  /** Display order, visible columns (with widths) and the ordered-list mode (contracts §2). */
  setView({ order = null, columns = null, ordered = false } = {}) {
    const norm = (cols) => (cols ? cols.map((c) => [c.name, Math.round(Number(c.width)) || 0])
      : null);
    const colsChanged = !same(norm(columns), norm(this.view.columns));
    const modeChanged = !!ordered !== this.view.ordered;
    const orderChanged = !sameIds(order, this.view.order);
    this.view = { order: order ? [...order] : null, columns: columns ? columns.map((c) => ({
      ...c })) : null, ordered: !!ordered, tableId: this.table ? this.table.id : null };
    if (!this.table) return;
    if (colsChanged && !modeChanged && this.sameNames(columns)) {
      // only widths changed: resize in place (no new header or rows)
      for (const c of columns) {
        const s = this.shown.find((x) => x.field.name === c.name);
        if (s) this.resizeColumn(c.name, Number(c.width) || defaultWidth(s.field), { done: false });
      }
    } else if (colsChanged || modeChanged) {
      this.rebuild();
      return;
    }
    if (!orderChanged) return;
    const before = this.renderedIndexes();
    this.applyOrder();
    if (this.view.ordered) this.flip(before);
  }

  /** Re-create the table's columns keeping scroll, the active cell and focus. */
  rebuild() {
    const scroll = this.wrap ? [this.wrap.scrollLeft, this.wrap.scrollTop] : [0, 0];
    const hadFocus = this.hasFocus();
    const head = document.activeElement?.closest?.("thead th[data-field]");
    const headName = head && this.thead?.contains(head) ? head.dataset.field : null;
    if (this.editing) this.commitEdit({ refocus: false });
    const activeName = this.active ? this.colName(this.active.col) : null;
    const anchorName = this.anchor ? this.colName(this.anchor.col) : null;
    this.computeCols();
    if (this.active) this.active.col = this.colOf(activeName, this.active.col);
    if (this.anchor) this.anchor.col = this.colOf(anchorName, this.anchor.col);
    this.build();
    this.applyOrder();
    [this.wrap.scrollLeft, this.wrap.scrollTop] = scroll;
    this.renderRows();
    if (headName && this.headerOf(headName)) this.headerOf(headName).focus();
    else if (this.active && hadFocus) this.focusActive();
  }

  /** Whether `columns` would show the same fields in the same order as now. */
  sameNames(columns) {
    const byName = new Set(this.fields.map((f) => f.name));
    const want = (columns || []).map((c) => c.name).filter((n) => byName.has(n));
    const now = this.shown.map((s) => s.field.name);
    return want.length > 0 && want.length === now.length && want.every((n, i) => n === now[i]);
  }

  colName(col) {
    const c = this.cols[col];
    return c ? (c.kind === "field" ? c.field.name : `:${c.kind}`) : null;
  }

  colOf(name, fallback) {
    if (name === null) return fallback;
    const i = this.cols.findIndex((c, j) => this.colName(j) === name);
    return i >= 0 ? i : clamp(fallback, 0, this.cols.length - 1);
  }

  computeCols() {
    const byName = new Map(this.fields.map((f) => [f.name, f]));
    let shown = [];
    if (Array.isArray(this.view.columns)) {
      shown = this.view.columns.filter((c) => c && byName.has(c.name)).map((c) => ({
        field: byName.get(c.name),
        width: clamp(Number(c.width) || defaultWidth(byName.get(c.name)), MIN_W, MAX_W),
      }));
    }
    if (!shown.length) shown = this.fields.map((f) => ({ field: f, width: defaultWidth(f) }));
    this.shown = shown;
    this.cols = [{ kind: "select" }, ...shown.map((s) => ({ kind: "field", field: s.field })),
      { kind: "actions" }];
  }

  numWidth() {
    return NUM_W + (this.view.ordered ? HANDLE_W : 0);
  }

  totalWidth() {
    return SELECT_W + this.numWidth() + ACTIONS_W + this.shown.reduce((a, s) => a + s.width, 0);
  }

  build() {
    this.resizeObserver?.disconnect();
    this.rowEls = new Map();
    this.pool = [];
    this.range = { start: 0, end: 0 };
    this.measured = false;
    this.wrap = el("div", { class: "grid-wrap" });
    this.sideways = false;
    // keyboard moves scroll cells clear of the sticky checkbox and row-number columns
    this.wrap.style.scrollPaddingLeft = `${SELECT_W + this.numWidth()}px`;
    this.sizer = el("div", { class: "grid-sizer" });
    this.tableEl = el("table", {
      class: `grid${this.view.ordered ? " grid-ordered" : ""}`, role: "grid",
      "aria-label": this.table.label, "aria-multiselectable": "true", tabindex: "-1",
      "aria-colcount": String(this.cols.length + 1),
    });
    this.colgroup = el("colgroup");
    for (const w of [SELECT_W, this.numWidth(), ...this.shown.map((s) => s.width), ACTIONS_W]) {
      const c = el("col");
      c.style.width = `${w}px`;
      this.colgroup.append(c);
    }
    this.setWidths();
    this.selectAll = el("input", { type: "checkbox", "aria-label": "Select all records" });
    this.selectAll.addEventListener("change", () => this.toggleAll(this.selectAll.checked));
    const headRow = el("tr", { role: "row", "aria-rowindex": "1" },
      el("th", { role: "columnheader", class: "col-select", "aria-colindex": "1" },
        this.selectAll),
      el("th", { role: "columnheader", class: "col-num", "aria-colindex": "2", title: "Row" },
        el("span", { class: "sr-only", text: "Row" })));
    this.shown.forEach(({ field: f }, i) => {
      const t = F.typeName(f);
      headRow.append(el("th", {
        role: "columnheader", "aria-colindex": String(i + 3), tabindex: "-1",
        title: `${f.label} · ${t}\nDrag to move; drag the right edge to resize`,
        class: F.isNumeric(f) ? "num" : null, "data-field": f.name,
      }, typeBadge(f),
      el("span", { class: "th-label", text: f.label }),
      el("span", { class: "sr-only", text: `, ${t}` }),
      el("span", { class: "col-resize", "aria-hidden": "true" })));
    });
    headRow.append(el("th", {
      role: "columnheader", class: "col-actions", "aria-colindex": String(this.cols.length + 1),
    }, el("span", { class: "sr-only", text: "Actions" })));
    this.thead = el("thead", {}, headRow);
    this.tbody = el("tbody");
    this.tableEl.append(this.colgroup, this.thead, this.tbody);

    this.addBtn = el("button", { type: "button", class: "add-row" },
      el("span", { class: "add-row-plus", html: icon("plus") }),
      el("span", { text: "New record" }),
      el("kbd", { class: "add-row-kbd", text: isMac() ? "⌘ Enter" : "Ctrl+Enter" }));
    this.addBtn.addEventListener("click", () => this.ctl.addRecord());
    this.emptyNote = el("p", { class: "grid-empty", text: "No records yet." });
    this.dropLine = el("div", { class: "grid-drop-line", hidden: true, "aria-hidden": "true" });
    this.tip = el("div", { class: "grid-tip", role: "tooltip", hidden: true });
    this.sizer.append(this.tableEl, el("div", { class: "add-row-line" }, this.addBtn),
      this.emptyNote, this.dropLine, this.tip);
    this.wrap.append(this.sizer);
    this.host.replaceChildren(this.wrap);
    this.viewH = this.wrap.clientHeight;
    this.headH = this.thead.offsetHeight || this.headH;
    this.resizeObserver?.observe(this.wrap);

    this.wrap.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.tableEl.addEventListener("keydown", (e) => this.onKeyDown(e));
    this.tableEl.addEventListener("mousedown", (e) => this.onMouseDown(e));
    this.tableEl.addEventListener("mouseover", (e) => this.onMouseOver(e));
    this.tableEl.addEventListener("mouseleave", () => this.hideTip());
    this.tableEl.addEventListener("dblclick", (e) => this.onDblClick(e));
    this.tableEl.addEventListener("change", (e) => this.onChange(e));
    this.tableEl.addEventListener("click", (e) => this.onClick(e));
    this.tableEl.addEventListener("copy", (e) => this.onCopy(e));
    this.tableEl.addEventListener("cut", (e) => this.onCopy(e, { cut: true }));
    this.tableEl.addEventListener("paste", (e) => this.onPaste(e));
    this.tableEl.addEventListener("dragover", (e) => this.onDragOver(e));
    this.tableEl.addEventListener("dragleave", (e) => this.onDragLeave(e));
    this.tableEl.addEventListener("drop", (e) => this.onDrop(e));
    this.thead.addEventListener("pointerdown", (e) => this.onHeadPointerDown(e));
    this.tbody.addEventListener("pointerdown", (e) => this.onHandlePointerDown(e));
  }

  setWidths() {
    const total = this.totalWidth();
    this.sizer.style.width = `${total}px`;
    this.tableEl.style.width = `${total}px`;
  }

  // --- data -------------------------------------------------------------------------------

  /** Replace the record set with `records` (the server's order), patching what changed. */
  update(records) {
    const next = new Map(records.map((r) => [r.id, r]));
    for (const id of this.records.keys()) if (!next.has(id)) this.forget(id);
    for (const rec of records) {
      const old = this.records.get(rec.id);
      const tr = old && this.rowEls.get(rec.id);
      if (tr) this.patchRow(tr, old, rec);
    }
    this.records = next;
    this.base = records.map((r) => r.id);
    this.applyOrder();
  }

  /** Replace or insert these records (by id) and drop removedIds; keeps everything else. */
  patch(records, removedIds = []) {
    let removed = false;
    for (const id of removedIds) {
      if (!this.records.has(id)) continue;
      this.forget(id);
      this.records.delete(id);
      removed = true;
    }
    if (removed) this.base = this.base.filter((id) => this.records.has(id));
    for (const rec of records) {
      const old = this.records.get(rec.id);
      this.records.set(rec.id, rec);
      if (!old) {
        this.base.push(rec.id);
        continue;
      }
      const tr = this.rowEls.get(rec.id);
      if (tr) this.patchRow(tr, old, rec);
    }
    this.applyOrder();
  }

  /** A record leaves the grid: its editor, row, selection and marks go. */
  forget(id) {
    if (this.editing && this.editing.id === id) this.closeEditor();
    const tr = this.rowEls.get(id);
    if (tr) this.releaseRow(id, tr);
    this.selected.delete(id);
    for (const k of [...this.errors.keys()]) if (k.startsWith(id + "|")) this.errors.delete(k);
  }

  /** Recompute the displayed ids (view order ∩ records) and re-render the window. */
  applyOrder() {
    const focusWasIn = this.hasFocus();
    const prevIndex = this.active ? this.index.get(this.active.id) : undefined;
    const ids = this.view.order ? this.view.order.filter((id) => this.records.has(id))
      : this.base;
    this.order = ids;
    this.index = new Map(ids.map((id, i) => [id, i]));
    if (this.active && !this.index.has(this.active.id)) {
      const i = Math.min(prevIndex ?? 0, ids.length - 1);
      this.active = i >= 0 ? { id: ids[i], col: this.active.col } : null;
      this.anchor = null;
      if (focusWasIn && this.active) this.focusParked = true;
    }
    if (this.anchor && !this.index.has(this.anchor.id)) this.anchor = null;
    if (!this.active && ids.length) this.active = { id: ids[0], col: this.firstFieldCol() };
    for (const id of [...this.selected]) if (!this.records.has(id)) this.selected.delete(id);
    this.tableEl.setAttribute("aria-rowcount", String(ids.length + 1));
    this.emptyNote.hidden = ids.length > 0;
    this.emptyNote.textContent = this.records.size ? "No records match this view."
      : "No records yet.";
    this.renderRows();
    if (focusWasIn && !this.hasFocus() && this.active) this.focusActive();
    this.syncSelectAll();
    this.ctl.onRows?.(ids.length, this.records.size);
  }

  firstFieldCol() {
    return this.cols.length > 2 ? 1 : 0;
  }

  lastFieldCol() {
    return this.cols.length > 2 ? this.cols.length - 2 : 0;
  }

  /** Ids in display order (CSV export of the current view). */
  visibleIds() {
    return [...this.order];
  }

  /** [{name, width}] of the displayed field columns, in display order. */
  columns() {
    return this.shown.map((s) => ({ name: s.field.name, width: s.width }));
  }

  // --- the rendered window ----------------------------------------------------------------

  onScroll() {
    this.lastScroll = performance.now();
    const sideways = this.wrap.scrollLeft > 0;
    if (sideways !== this.sideways) {
      this.sideways = sideways;
      this.wrap.classList.toggle("hscroll", sideways);
    }
    this.hideTip();
    this.schedule();
  }

  /** Re-render on the next frame, unless the rendered rows still cover the viewport with a
   * margin (scrolling within the buffer changes nothing in the DOM). */
  schedule() {
    if (this.raf) return;
    this.raf = requestAnimationFrame(() => {
      this.raf = 0;
      if (!this.covers()) this.renderRows();
    });
  }

  covers() {
    const n = this.order.length;
    const top = this.wrap.scrollTop;
    const h = this.viewH || 600;
    const first = Math.max(0, Math.floor((top - this.headH) / this.rowH));
    const last = Math.min(n, Math.ceil((top + h) / this.rowH));
    const { start, end } = this.range;
    return start <= Math.max(0, first - MARGIN) && end >= Math.min(n, last + MARGIN);
  }

  /** Render the rows in view (± BUFFER): recycle rows that left, fill rows that entered. */
  renderRows() {
    if (!this.tbody) return;
    const n = this.order.length;
    const top = this.wrap.scrollTop;
    const h = this.viewH || 600;
    let start = clamp(Math.floor((top - this.headH) / this.rowH) - BUFFER, 0, n);
    const end = clamp(Math.ceil((top + h) / this.rowH) + BUFFER, 0, n);
    if (start > end) start = end;
    for (const [id, tr] of this.rowEls) {
      const i = this.index.get(id);
      if (i === undefined || i < start || i >= end) this.releaseRow(id, tr);
    }
    let prev = null;
    for (let i = start; i < end; i++) {
      const id = this.order[i];
      let tr = this.rowEls.get(id);
      if (!tr) {
        tr = this.pool.pop() || this.rowShell();
        this.fillRow(tr, this.records.get(id));
        this.rowEls.set(id, tr);
      }
      const want = prev ? prev.nextSibling : this.tbody.firstChild;
      if (want !== tr) {
        const refocus = tr.contains(document.activeElement) ? document.activeElement : null;
        this.tbody.insertBefore(tr, want);
        if (refocus) refocus.focus({ preventScroll: true });
      }
      if (tr._index !== i) {
        tr._index = i;
        tr.setAttribute("aria-rowindex", String(i + 2));
        tr._num.textContent = String(i + 1);
      }
      prev = tr;
    }
    this.range = { start, end };
    this.tableEl.style.marginTop = `${start * this.rowH}px`;
    this.tableEl.style.marginBottom = `${(n - end) * this.rowH}px`;
    if (!this.measured && end > start) {
      // one measurement per grid build: the real row height (fonts, zoom)
      this.measured = true;
      const hh = this.tbody.firstChild.offsetHeight;
      const head = this.thead.offsetHeight;
      if (head) this.headH = head;
      if (hh && hh !== this.rowH) {
        this.rowH = hh;
        this.renderRows();
        return;
      }
    }
    this.syncTabStops();
    this.paintRange();
    if (this.focusParked && (document.activeElement === this.tableEl ||
      document.activeElement === document.body)) {
      const t = this.activeTarget();
      if (t) {
        this.focusParked = false;
        t.focus({ preventScroll: true });
      }
    }
  }

  /** Take a row out of the DOM (to the pool); an editor in it is saved, focus parks. */
  releaseRow(id, tr) {
    if (this.editing && this.editing.id === id) this.commitEdit({ refocus: false });
    if (tr.contains(document.activeElement)) {
      this.focusParked = true;
      this.tableEl.focus({ preventScroll: true });
    }
    if (this.hoverTd && tr.contains(this.hoverTd)) this.hideTip();
    tr.remove();
    tr.style.transform = "";
    tr.style.transition = "";
    this.rowEls.delete(id);
    tr._rec = null;
    tr._index = -1;
    if (this.pool.length < POOL_MAX) this.pool.push(tr);
  }

  /** An empty row for the current columns (filled by fillRow). */
  rowShell() {
    const tr = el("tr", { role: "row", "aria-selected": "false" });
    const box = el("input", { type: "checkbox", tabindex: "-1", class: "row-select" });
    const num = el("span", { class: "row-num" });
    const head = el("th", { scope: "row", role: "rowheader", class: "col-num",
      "aria-colindex": "2" });
    if (this.view.ordered) {
      head.append(el("button", { type: "button", class: "row-handle", tabindex: "-1",
        html: GRIP }));
    }
    head.append(num);
    if (typeof this.ctl.openRecord === "function") {
      head.append(el("button", { type: "button", class: "row-open", tabindex: "-1",
        html: EXPAND }));
    }
    const sel = el("td", { role: "gridcell", class: "col-select", "aria-colindex": "1" }, box);
    sel._col = 0;
    tr.append(sel, head);
    this.shown.forEach(({ field: f }, i) => {
      const td = el("td", {
        role: "gridcell", tabindex: "-1", "data-field": f.name, "data-label": f.label,
        "aria-colindex": String(i + 3), class: `cell type-${F.kindOf(f)}`,
      });
      td._col = i + 1;
      tr.append(td);
    });
    const del = el("button", { type: "button", class: "row-delete", tabindex: "-1",
      title: "Delete record", html: icon("trash") });
    const act = el("td", {
      role: "gridcell", class: "col-actions", "aria-colindex": String(this.cols.length + 1),
    }, del);
    act._col = this.cols.length - 1;
    tr.append(act);
    tr._num = num;
    tr._index = -1;
    return tr;
  }

  fillRow(tr, rec) {
    tr._rec = rec;
    tr.dataset.id = rec.id;
    tr.style.transform = "";
    for (const td of tr.querySelectorAll("td.cell")) {
      td._range = undefined;
      td._flash?.cancel();
      td.classList.remove("editing", "drop-over");
      td.setAttribute("tabindex", "-1");
      td.classList.remove("active");
      this.renderCell(td, rec, this.cols[td._col].field);
    }
    this.labelRow(tr, rec);
    const on = this.selected.has(rec.id);
    tr.setAttribute("aria-selected", on ? "true" : "false");
    tr.classList.toggle("selected", on);
    tr.querySelector(".row-select").checked = on;
  }

  /** Name the row's buttons after the record. */
  labelRow(tr, rec) {
    const name = this.recordName(rec.id, rec);
    tr.querySelector(".row-select").setAttribute("aria-label", `Select record ${name}`);
    tr.querySelector(".row-delete").setAttribute("aria-label", `Delete record ${name}`);
    const open = tr.querySelector(".row-open");
    if (open) {
      open.setAttribute("aria-label", `Open record ${name}`);
      open.title = `Open record ${name} (Shift+Enter)`;
    }
    const handle = tr.querySelector(".row-handle");
    if (handle) {
      handle.setAttribute("aria-label", `Move ${name}`);
      handle.title = `Drag to move ${name} (or Alt+↑/↓)`;
    }
  }

  renderedIndexes() {
    const m = new Map();
    for (const [id, tr] of this.rowEls) m.set(id, tr._index);
    return m;
  }

  /** Remote reorder: slide rows from where they were to where they are (FLIP, no measuring). */
  flip(before) {
    if (reducedMotion()) return;
    const moved = [];
    for (const [id, tr] of this.rowEls) {
      const was = before.get(id);
      if (was === undefined || was === tr._index) continue;
      tr.style.transition = "none";
      tr.style.transform = `translateY(${(was - tr._index) * this.rowH}px)`;
      moved.push(tr);
    }
    if (!moved.length) return;
    requestAnimationFrame(() => requestAnimationFrame(() => {
      for (const tr of moved) {
        tr.style.transition = "transform 220ms ease-out";
        tr.style.transform = "";
        tr.addEventListener("transitionend", () => { tr.style.transition = ""; },
          { once: true });
      }
    }));
  }

  patchRow(tr, old, rec) {
    tr._rec = rec;
    // file cells name the record in their buttons' labels
    const renamed = !!old && this.recordName(rec.id, old) !== this.recordName(rec.id, rec);
    if (renamed) this.labelRow(tr, rec);
    for (const { field: f } of this.shown) {
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
      this.paintCell(td, tr._index);
      if (!local || !same(local.value, now)) this.flash(td);
    }
  }

  /** Re-render link chips after link labels became known. */
  refreshLinks() {
    for (const { field: f } of this.shown) {
      if (f.type !== "entity_ref") continue;
      for (const [id, tr] of this.rowEls) {
        if (this.editing && this.editing.key === key(id, f.name)) continue;
        const td = this.cellEl(id, f.name);
        if (td) this.renderCell(td, tr._rec, f);
      }
    }
  }

  /** Re-render the file cells showing blob `hash` (every file cell when null). */
  refreshFiles(hash = null) {
    for (const { field: f } of this.shown) {
      if (f.type !== "blob_ref") continue;
      for (const [id, tr] of this.rowEls) {
        if (hash !== null && this.valueOf(id, f.name) !== hash) continue;
        const td = this.cellEl(id, f.name);
        if (td) this.renderCell(td, tr._rec, f);
      }
    }
  }

  cellEl(id, name) {
    const tr = this.rowEls.get(id);
    if (!tr) return null;
    const col = this.cols.findIndex((c) => c.kind === "field" && c.field.name === name);
    return col > 0 ? tr.children[col + 1] : null;
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

  /** Briefly highlight a changed cell (Web Animations: restarting needs no forced layout). */
  flash(td) {
    if (typeof td.animate !== "function") return;
    td._flash?.cancel();
    td._flash = td.animate([{ backgroundColor: "#fff1b8" }, { backgroundColor: "transparent" }],
      { duration: 1200, easing: "ease-out" });
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
    return tr.children[this.active.col + 1];
  }

  syncTabStops() {
    for (const x of this.tableEl.querySelectorAll('tbody [tabindex="0"]')) {
      x.setAttribute("tabindex", "-1");
      x.classList.remove("active");
      x.closest("td")?.classList.remove("active");
    }
    const t = this.activeTarget();
    if (t) {
      t.setAttribute("tabindex", "0");
      (t.closest("td") || t).classList.add("active");
    }
    // with the active row scrolled away, the table itself keeps the grid in the tab order
    this.tableEl.setAttribute("tabindex", t || !this.active ? "-1" : "0");
  }

  setActive(id, col, { focus = true, extend = false } = {}) {
    if (this.freshError && this.freshError !== key(id, this.cols[col]?.field?.name)) {
      const [eid, name] = this.freshError.split("|");
      this.freshError = null;
      this.cellEl(eid, name)?.classList.remove("error-fresh");
    }
    if (extend) {
      if (!this.anchor && this.active) this.anchor = { ...this.active };
    } else {
      this.anchor = null;
    }
    this.active = { id, col: clamp(col, 0, this.cols.length - 1) };
    this.syncTabStops();
    this.paintRange();
    if (focus) this.focusActive();
  }

  /** Scroll so that row i is inside the viewport, rendering it at once. */
  scrollToIndex(i) {
    const top = this.wrap.scrollTop;
    const h = this.viewH || this.wrap.clientHeight;
    const rowTop = this.headH + i * this.rowH;
    let next = top;
    if (rowTop - this.headH < top) next = rowTop - this.headH;
    else if (rowTop + this.rowH > top + h) next = rowTop + this.rowH - h;
    if (next !== top) this.wrap.scrollTop = next;
    if (next !== top || i < this.range.start || i >= this.range.end) this.renderRows();
  }

  focusActive() {
    if (!this.active) return;
    const i = this.index.get(this.active.id);
    if (i === undefined) return;
    this.scrollToIndex(i);
    const t = this.activeTarget();
    if (!t) return;
    this.focusParked = false;
    t.focus({ preventScroll: true });
    (t.closest("td") || t).scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  /** Focus a record's first field (used after adding a record). */
  focusRecord(id) {
    if (!this.index.has(id)) return;
    this.setActive(id, this.firstFieldCol());
  }

  pageRows() {
    return Math.max(1, Math.floor(((this.viewH || 600) - this.headH) / this.rowH) - 1);
  }

  move(dRow, dCol, { extend = false } = {}) {
    if (!this.active || !this.order.length) return false;
    const r = this.index.get(this.active.id) ?? 0;
    const nr = clamp(r + dRow, 0, this.order.length - 1);
    const nc = clamp(this.active.col + dCol, 0, this.cols.length - 1);
    if (nr === r && nc === this.active.col) return false;
    this.setActive(this.order[nr], nc, { extend });
    return true;
  }

  moveTo(row, col, { extend = false } = {}) {
    if (!this.order.length) return;
    this.setActive(this.order[clamp(row, 0, this.order.length - 1)], col, { extend });
  }

  locate(target) {
    const td = target.closest("td, th");
    const tr = target.closest("tr");
    if (!td || !tr || !tr.dataset.id || tr.parentNode !== this.tbody) return null;
    if (td._col === undefined) return null;
    return { id: tr.dataset.id, col: td._col, td };
  }

  // --- the selected range -----------------------------------------------------------------

  /** {top, bottom, left, right} in display rows / columns, or null. */
  rangeRect() {
    if (!this.active || !this.index.has(this.active.id)) return null;
    const a = this.anchor && this.index.has(this.anchor.id) ? this.anchor : this.active;
    const r0 = this.index.get(a.id);
    const r1 = this.index.get(this.active.id);
    return { top: Math.min(r0, r1), bottom: Math.max(r0, r1),
      left: Math.min(a.col, this.active.col), right: Math.max(a.col, this.active.col) };
  }

  /** The range limited to field columns (what copy, paste and Delete act on). */
  fieldRect() {
    const r = this.rangeRect();
    if (!r) return null;
    const left = Math.max(r.left, this.firstFieldCol());
    const right = Math.min(r.right, this.lastFieldCol());
    if (left > right || this.cols[left].kind !== "field") return null;
    return { ...r, left, right };
  }

  isMulti() {
    const r = this.rangeRect();
    return !!r && (r.top !== r.bottom || r.left !== r.right);
  }

  paintRange() {
    if (!this.tbody) return;
    this.rect = this.isMulti() ? this.rangeRect() : null;
    for (const tr of this.rowEls.values()) {
      for (const td of tr.children) if (td.classList.contains("cell")) this.paintCell(td, tr._index);
    }
  }

  paintCell(td, i) {
    const r = this.rect;
    const c = td._col;
    const on = !!r && i >= r.top && i <= r.bottom && c >= r.left && c <= r.right;
    const state = on ? `${i === r.top}${i === r.bottom}${c === r.left}${c === r.right}` : "";
    if (td._range === state) return; // unchanged: no DOM writes while scrolling
    td._range = state;
    td.classList.toggle("in-range", on);
    td.classList.toggle("range-top", on && i === r.top);
    td.classList.toggle("range-bottom", on && i === r.bottom);
    td.classList.toggle("range-left", on && c === r.left);
    td.classList.toggle("range-right", on && c === r.right);
    td.setAttribute("aria-selected", on ? "true" : "false");
  }

  selectAllCells() {
    if (!this.order.length) return;
    this.anchor = { id: this.order[0], col: this.firstFieldCol() };
    this.active = { id: this.order[this.order.length - 1], col: this.lastFieldCol() };
    this.syncTabStops();
    this.paintRange();
    this.focusActive();
    announce(`Selected all ${this.order.length} rows`);
  }

  // --- events -----------------------------------------------------------------------------

  onMouseDown(e) {
    if (this.editing && this.editing.td.contains(e.target)) return;
    if (e.button !== 0) return;
    const at = this.locate(e.target);
    if (!at) return;
    if (this.editing) this.commitEdit({ refocus: false });
    const isControl = !!e.target.closest("input, button");
    const extend = e.shiftKey && !isControl && this.cols[at.col].kind === "field";
    this.setActive(at.id, at.col, { focus: !isControl, extend });
    if (isControl) return;
    e.preventDefault(); // keep focus on the cell, not on text selection
    if (this.cols[at.col].kind !== "field") return;
    // drag over cells to select a rectangle
    if (!extend) this.anchor = { id: at.id, col: at.col };
    this.selecting = true;
    // past the top or bottom edge while dragging: scroll and keep extending
    const box = this.wrap.getBoundingClientRect();
    let y = e.clientY;
    let timer = 0;
    const tick = () => {
      timer = 0;
      if (!this.selecting || !this.active) return;
      const dir = y < box.top + this.headH ? -1 : y > box.bottom ? 1 : 0;
      if (!dir) return;
      this.wrap.scrollTop += dir * this.rowH;
      const row = clamp(Math.floor((y - box.top + this.wrap.scrollTop - this.headH) /
        this.rowH), 0, this.order.length - 1);
      const anchor = this.anchor;
      this.active = { id: this.order[row], col: this.active.col };
      this.anchor = anchor;
      this.renderRows();
      this.activeTarget()?.focus({ preventScroll: true });
      timer = setTimeout(tick, 50);
    };
    const move = (ev) => {
      y = ev.clientY;
      if (!timer) tick();
    };
    const up = () => {
      this.selecting = false;
      clearTimeout(timer);
      document.removeEventListener("mouseup", up);
      document.removeEventListener("mousemove", move);
    };
    document.addEventListener("mouseup", up);
    document.addEventListener("mousemove", move);
  }

  onMouseOver(e) {
    const at = this.locate(e.target);
    if (this.selecting) {
      if (!at || this.cols[at.col].kind !== "field") return;
      if (this.active && at.id === this.active.id && at.col === this.active.col) return;
      const anchor = this.anchor;
      this.active = { id: at.id, col: at.col };
      this.anchor = anchor;
      this.syncTabStops();
      this.paintRange();
      at.td.focus({ preventScroll: true });
      return;
    }
    const td = at && at.td.classList.contains("cell") ? at.td : null;
    if (td !== this.hoverTd) this.hoverCell(td, at);
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
      return;
    }
    const open = e.target.closest(".row-open");
    if (open) this.ctl.openRecord?.(open.closest("tr").dataset.id);
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
    const th = e.target.closest && e.target.closest("thead th[data-field]");
    if (th) {
      this.onHeadKey(e, th);
      return;
    }
    let at = this.locate(e.target);
    if (!at && e.target === this.tableEl && this.active) {
      // focus parked on the table while the active row is scrolled away
      at = { id: this.active.id, col: this.active.col, td: null };
    }
    if (!at) return;
    if (this.active?.id !== at.id || this.active?.col !== at.col) {
      this.setActive(at.id, at.col, { focus: false });
    }
    const col = this.cols[at.col];
    const mod = e.ctrlKey || e.metaKey;
    const shift = e.shiftKey;
    const field = col.kind === "field" ? col.field : null;
    const row = this.index.get(at.id) ?? 0;
    let handled = true;
    if (e.altKey && !mod && (e.key === "ArrowUp" || e.key === "ArrowDown") &&
      this.view.ordered) {
      // J8: move this row one place up or down
      this.moveRowBy(at.id, e.key === "ArrowUp" ? -1 : 1);
      e.preventDefault();
      e.stopPropagation();
      return;
    }
    if (field && e.key === "Enter" && e.altKey && !mod) {
      // Alt+Enter: decide a conflict or a drift on this cell (docs/ui.md)
      const rec = this.records.get(at.id);
      if ((rec?.conflicts || []).includes(field.name)) this.ctl.resolveConflict?.(at.id, field);
      else if ((rec?.drifted || []).includes(field.name)) this.ctl.openDrift?.(at.id, field);
      e.preventDefault();
      e.stopPropagation();
      return;
    }
    if (shift && !mod && !e.altKey && (e.key === "Enter" || e.key === " ") &&
      typeof this.ctl.openRecord === "function") {
      this.ctl.openRecord(at.id);
      e.preventDefault();
      e.stopPropagation();
      return;
    }
    if (field && field.type === "blob_ref" && !mod && !e.altKey && !shift &&
      (e.key === "Enter" || e.key === "F2" || e.key === " ")) {
      // a file cell has no editor: open its file, or pick one for an empty cell
      const v = this.valueOf(at.id, field.name);
      if (v) this.ctl.files.open(v, field, this.recordName(at.id));
      else this.ctl.files.pick(at.id, field);
      e.preventDefault();
      e.stopPropagation();
      return;
    }
    const ext = { extend: shift };
    const last = this.order.length - 1;
    switch (e.key) {
      case "ArrowUp":
        if (mod) this.moveTo(0, at.col, ext);
        else if (row === 0 && !shift && field) this.headerOf(field.name)?.focus();
        else this.move(-1, 0, ext);
        break;
      case "ArrowDown":
        if (mod) this.moveTo(last, at.col, ext);
        else this.move(1, 0, ext);
        break;
      case "ArrowLeft":
        if (mod) this.moveTo(row, this.firstFieldCol(), ext);
        else this.move(0, -1, ext);
        break;
      case "ArrowRight":
        if (mod) this.moveTo(row, this.lastFieldCol(), ext);
        else this.move(0, 1, ext);
        break;
      case "PageUp": this.move(-this.pageRows(), 0, ext); break;
      case "PageDown": this.move(this.pageRows(), 0, ext); break;
      case "Home":
        if (mod) this.moveTo(0, this.firstFieldCol(), ext);
        else this.moveTo(row, this.firstFieldCol(), ext);
        break;
      case "End":
        if (mod) this.moveTo(last, this.lastFieldCol(), ext);
        else this.moveTo(row, this.lastFieldCol(), ext);
        break;
      case "Tab":
        if (mod) { handled = false; break; }
        handled = this.move(0, shift ? -1 : 1);
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
        if (!field && !this.isMulti()) { handled = false; break; }
        if (this.isMulti()) this.clearRange();
        else if (this.valueOf(at.id, field.name) !== null &&
          this.valueOf(at.id, field.name) !== undefined) this.sendEdit(at.id, field, null);
        break;
      case "Escape":
        if (field && this.errors.has(key(at.id, field.name))) {
          this.errors.delete(key(at.id, field.name));
          this.rerender(at.id, field);
        } else if (this.isMulti()) {
          this.anchor = null;
          this.paintRange();
        } else {
          handled = false;
        }
        break;
      default:
        if (mod && !e.altKey && (e.key === "c" || e.key === "C" || e.key === "x" ||
          e.key === "X")) {
          // the browser's copy command fires a `copy` event (onCopy); if it does not, copy
          // through the async clipboard instead
          this.clipboardArmed = e.key.toLowerCase();
          setTimeout(() => {
            if (this.clipboardArmed) this.copyFallback(this.clipboardArmed === "x");
          }, 0);
          handled = false;
        } else if (mod && !e.altKey && (e.key === "v" || e.key === "V")) {
          this.clipboardArmed = "v";
          setTimeout(() => {
            if (this.clipboardArmed === "v") this.pasteFallback();
          }, 0);
          handled = false;
        } else if (mod && !e.altKey && (e.key === "a" || e.key === "A")) {
          this.selectAllCells();
        } else if (field && field.type !== "blob_ref" && e.key.length === 1 && !mod &&
          !e.altKey) {
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

  // --- selected rows (checkboxes) ---------------------------------------------------------

  toggleAll(on) {
    this.selected = new Set(on ? this.order : []);
    this.syncSelection();
  }

  syncSelection() {
    for (const [id, tr] of this.rowEls) {
      const on = this.selected.has(id);
      tr.setAttribute("aria-selected", on ? "true" : "false");
      tr.classList.toggle("selected", on);
      tr.querySelector(".row-select").checked = on;
    }
    this.syncSelectAll();
    this.ctl.onSelection?.([...this.selected]);
  }

  syncSelectAll() {
    if (!this.selectAll) return;
    const n = this.selected.size;
    this.selectAll.checked = n > 0 && n >= this.order.length &&
      this.order.every((id) => this.selected.has(id));
    this.selectAll.indeterminate = n > 0 && !this.selectAll.checked;
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
    const n = this.index.get(id);
    return n !== undefined ? `row ${n + 1}` : `…${F.shortId(id)}`;
  }

  // --- clipboard --------------------------------------------------------------------------

  /** The selected range (or the active cell) as rows of copy texts. */
  copyRows() {
    const r = this.fieldRect();
    if (!r) return null;
    const helpers = { linkLabel: (id) => this.ctl.linkLabel?.(id) };
    const rows = [];
    for (let i = r.top; i <= r.bottom; i++) {
      const id = this.order[i];
      const row = [];
      for (let c = r.left; c <= r.right; c++) {
        const f = this.cols[c].field;
        row.push(C.copyText(f, this.valueOf(id, f.name), helpers));
      }
      rows.push(row);
    }
    const header = [];
    for (let c = r.left; c <= r.right; c++) header.push(this.cols[c].field.label);
    return { rows, header, cells: (r.bottom - r.top + 1) * (r.right - r.left + 1) };
  }

  onCopy(e, { cut = false } = {}) {
    if (this.editing) return; // the editor's own text
    this.clipboardArmed = null;
    const data = this.copyRows();
    if (!data || !e.clipboardData) return;
    e.preventDefault();
    e.clipboardData.setData("text/plain", C.formatTSV(data.rows));
    e.clipboardData.setData("text/html", C.formatHTML(data.rows));
    this.copied(data, cut);
  }

  copied(data, cut) {
    announce(data.cells === 1 ? (cut ? "Cut 1 cell" : "Copied 1 cell")
      : `${cut ? "Cut" : "Copied"} ${data.cells} cells`);
    if (cut) this.clearRange();
  }

  async copyFallback(cut) {
    this.clipboardArmed = null;
    const data = this.copyRows();
    if (!data || !navigator.clipboard) return;
    const text = C.formatTSV(data.rows);
    try {
      if (typeof ClipboardItem === "function" && navigator.clipboard.write) {
        await navigator.clipboard.write([new ClipboardItem({
          "text/plain": new Blob([text], { type: "text/plain" }),
          "text/html": new Blob([C.formatHTML(data.rows)], { type: "text/html" }),
        })]);
      } else {
        await navigator.clipboard.writeText(text);
      }
      this.copied(data, cut);
    } catch (err) {
      toast(`Couldn't copy: ${err.message || err}`, { kind: "error" });
    }
  }

  onPaste(e) {
    if (this.editing) return; // pasting into the editor's text box
    this.clipboardArmed = null;
    if (!e.clipboardData) return;
    e.preventDefault();
    this.pasteText(e.clipboardData.getData("text/plain"));
  }

  async pasteFallback() {
    this.clipboardArmed = null;
    if (!navigator.clipboard?.readText) return;
    try {
      this.pasteText(await navigator.clipboard.readText());
    } catch (err) {
      toast(`Couldn't read the clipboard: ${err.message || err}. Allow clipboard access ` +
        "for this page to paste.", { kind: "error" });
    }
  }

  /** Records of the link field's target tables, for matching pasted names. */
  async linkItems(field) {
    try {
      const groups = await this.ctl.linkChoices(field);
      return groups.flatMap((g) => g.items);
    } catch {
      return [];
    }
  }

  /**
   * Paste spreadsheet text: a rectangle from the active (top-left) cell, or one value into
   * every cell of the selected range. Cells that cannot take their value are reported in one
   * toast; the others are written as ONE change (one undo step).
   */
  async pasteText(text) {
    const rect = this.fieldRect();
    if (!rect || text === undefined || text === null) return;
    const rows = C.parseTSV(text);
    if (!rows.length) return;
    const targets = []; // [{row, col, text}]
    let rowsBeyond = 0;
    let colsBeyond = 0;
    const last = this.lastFieldCol();
    if (rows.length === 1 && rows[0].length === 1 && this.isMulti()) {
      for (let i = rect.top; i <= rect.bottom; i++) {
        for (let c = rect.left; c <= rect.right; c++) targets.push({ row: i, col: c, text: rows[0][0] });
      }
    } else {
      rows.forEach((cells, r) => {
        const i = rect.top + r;
        if (i >= this.order.length) {
          rowsBeyond += 1;
          return;
        }
        cells.forEach((t, c) => {
          const col = rect.left + c;
          if (col > last) colsBeyond += 1;
          else targets.push({ row: i, col, text: t });
        });
      });
    }
    const linkCache = new Map();
    const monthFirst = /^en-US|^en$/i.test(navigator.language || "en-US");
    const updates = new Map(); // id -> values
    const problems = [];
    for (const t of targets) {
      const f = this.cols[t.col].field;
      const id = this.order[t.row];
      let links = null;
      if (f.type === "entity_ref") {
        if (!linkCache.has(f.name)) linkCache.set(f.name, await this.linkItems(f));
        links = linkCache.get(f.name);
      }
      try {
        const v = C.pasteValue(f, t.text, { links, monthFirst });
        if (!updates.has(id)) updates.set(id, {});
        updates.get(id)[f.name] = v;
      } catch (err) {
        const shown = t.text.length > 24 ? `${t.text.slice(0, 23)}…` : t.text;
        problems.push(`${f.label} row ${t.row + 1}: “${shown}” ${err.message}`);
      }
    }
    const notes = [];
    if (problems.length) {
      notes.push(`${problems.length} ${problems.length === 1 ? "cell" : "cells"} not pasted: ` +
        problems.slice(0, 3).join("; ") + (problems.length > 3 ? "; …" : ""));
    }
    if (rowsBeyond) {
      notes.push(`${rowsBeyond} ${rowsBeyond === 1 ? "row" : "rows"} not pasted: no rows ` +
        "below (add records first)");
    }
    if (colsBeyond) {
      notes.push(`${colsBeyond} ${colsBeyond === 1 ? "cell" : "cells"} past the last column ` +
        "not pasted");
    }
    // the pasted block becomes the selected range
    const bottom = targets.reduce((m, t) => Math.max(m, t.row), rect.top);
    const right = targets.reduce((m, t) => Math.max(m, t.col), rect.left);
    if (targets.length > 1) {
      this.anchor = { id: this.order[bottom], col: right };
      this.active = { id: this.order[rect.top], col: rect.left };
      this.syncTabStops();
      this.paintRange();
      if (this.hasFocus()) this.focusActive();
    }
    if (notes.length) toast(notes.join(". "), { kind: "warning", timeout: 12000 });
    if (!updates.size) return;
    const list = [...updates].map(([id, values]) => ({ id, values }));
    const n = list.reduce((a, u) => a + Object.keys(u.values).length, 0);
    await this.sendBatch(list);
    announce(`Pasted ${n} ${n === 1 ? "cell" : "cells"}` +
      (problems.length ? `, ${problems.length} not pasted` : ""));
  }

  /** Clear every cell of the selected range as one change. */
  clearRange() {
    const r = this.fieldRect();
    if (!r) return;
    const list = [];
    for (let i = r.top; i <= r.bottom; i++) {
      const id = this.order[i];
      const values = {};
      for (let c = r.left; c <= r.right; c++) {
        const f = this.cols[c].field;
        const v = this.valueOf(id, f.name);
        if (v !== null && v !== undefined) values[f.name] = null;
      }
      if (Object.keys(values).length) list.push({ id, values });
    }
    if (list.length) this.sendBatch(list);
  }

  /** Write several cells as ONE change: optimistic display, then the engine's answer. */
  async sendBatch(list) {
    const token = ++this.tokens;
    const keys = [];
    for (const u of list) {
      for (const [name, value] of Object.entries(u.values)) {
        const k = key(u.id, name);
        keys.push([u.id, name, k]);
        this.errors.delete(k);
        this.pending.set(k, { value, token });
      }
    }
    const fieldOf = (name) => this.fields.find((f) => f.name === name);
    const redraw = () => {
      for (const [id, name] of keys) {
        const f = fieldOf(name);
        if (f) this.rerender(id, f);
      }
    };
    redraw();
    try {
      if (typeof this.ctl.pasteUpdates === "function") await this.ctl.pasteUpdates(list);
      else await api.post("/records/update", { updates: list });
    } catch (err) {
      toast(`Nothing was changed: ${err.message || err}`, { kind: "error" });
    } finally {
      for (const [, , k] of keys) if (this.pending.get(k)?.token === token) this.pending.delete(k);
      redraw();
    }
  }

  // --- columns: resize and reorder --------------------------------------------------------

  headerOf(name) {
    return this.thead?.querySelector(`th[data-field="${CSS.escape(name)}"]`) || null;
  }

  columnsChanged(message) {
    const cols = this.columns();
    this.view.columns = cols.map((c) => ({ ...c }));
    this.ctl.onColumnsChanged?.(cols);
    if (message) announce(message);
  }

  resizeColumn(name, width, { done = true } = {}) {
    const i = this.shown.findIndex((s) => s.field.name === name);
    if (i < 0) return;
    const w = Math.round(clamp(width, MIN_W, MAX_W));
    this.shown[i].width = w;
    this.colgroup.children[i + 2].style.width = `${w}px`;
    this.setWidths();
    if (done) this.columnsChanged(`${this.shown[i].field.label} column is ${w} pixels wide`);
  }

  moveColumn(name, to) {
    const from = this.shown.findIndex((s) => s.field.name === name);
    if (from < 0) return;
    const target = clamp(to, 0, this.shown.length - 1);
    if (target === from) return;
    const [s] = this.shown.splice(from, 1);
    this.shown.splice(target, 0, s);
    this.view.columns = this.columns();
    this.rebuild();
    this.columnsChanged(`${s.field.label} moved to column ${target + 1} of ${this.shown.length}`);
  }

  onHeadKey(e, th) {
    const name = th.dataset.field;
    const i = this.shown.findIndex((s) => s.field.name === name);
    const mod = e.ctrlKey || e.metaKey;
    let handled = true;
    if (e.altKey && e.shiftKey && (e.key === "ArrowLeft" || e.key === "ArrowRight")) {
      this.resizeColumn(name, this.shown[i].width +
        (e.key === "ArrowLeft" ? -RESIZE_STEP : RESIZE_STEP));
    } else if (mod && e.shiftKey && (e.key === "ArrowLeft" || e.key === "ArrowRight")) {
      this.moveColumn(name, i + (e.key === "ArrowLeft" ? -1 : 1));
    } else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      const next = this.shown[i + (e.key === "ArrowLeft" ? -1 : 1)];
      if (next) this.headerOf(next.field.name)?.focus();
    } else if (e.key === "ArrowDown" || e.key === "Escape") {
      if (this.order.length) this.setActive(this.order[0], i + 1);
    } else {
      handled = false;
    }
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  }

  onHeadPointerDown(e) {
    if (e.button !== 0) return;
    const th = e.target.closest("th[data-field]");
    if (!th) return;
    const name = th.dataset.field;
    const i = this.shown.findIndex((s) => s.field.name === name);
    if (e.target.closest(".col-resize")) {
      e.preventDefault();
      const x0 = e.clientX;
      const w0 = this.shown[i].width;
      document.body.classList.add("grid-col-resizing");
      const onMove = (ev) => this.resizeColumn(name, w0 + ev.clientX - x0, { done: false });
      const onUp = (ev) => {
        document.removeEventListener("pointermove", onMove);
        document.removeEventListener("pointerup", onUp);
        document.body.classList.remove("grid-col-resizing");
        this.resizeColumn(name, w0 + ev.clientX - x0);
      };
      document.addEventListener("pointermove", onMove);
      document.addEventListener("pointerup", onUp);
      return;
    }
    // drag a header to move its column; the edges are read once, at the start
    const heads = [...this.thead.querySelectorAll("th[data-field]")];
    const edges = heads.map((h) => [h.offsetLeft, h.offsetLeft + h.offsetWidth]);
    const tableLeft = this.tableEl.getBoundingClientRect().left;
    const x0 = e.clientX;
    let dragging = false;
    let slot = i;
    const onMove = (ev) => {
      if (!dragging && Math.abs(ev.clientX - x0) < 5) return;
      if (!dragging) {
        dragging = true;
        th.classList.add("col-dragging");
        document.body.classList.add("grid-col-moving");
      }
      const x = ev.clientX - tableLeft;
      slot = edges.filter(([a, b]) => (a + b) / 2 < x).length;
      const edge = slot < edges.length ? edges[slot][0] : edges[edges.length - 1][1];
      this.dropLine.hidden = false;
      this.dropLine.className = "grid-drop-line vertical";
      this.dropLine.style.left = `${edge - 1}px`;
      this.dropLine.style.top = `${this.wrap.scrollTop}px`;
      this.dropLine.style.height = `${this.viewH || this.wrap.clientHeight}px`;
    };
    const onUp = () => {
      document.removeEventListener("pointermove", onMove);
      document.removeEventListener("pointerup", onUp);
      document.body.classList.remove("grid-col-moving");
      th.classList.remove("col-dragging");
      this.dropLine.hidden = true;
      if (!dragging) return;
      const to = slot > i ? slot - 1 : slot;
      if (to !== i) this.moveColumn(name, to);
    };
    document.addEventListener("pointermove", onMove);
    document.addEventListener("pointerup", onUp);
  }

  // --- ordered lists (J8): drag handle and Alt+↑/↓ ----------------------------------------

  onHandlePointerDown(e) {
    const handle = e.target.closest(".row-handle");
    if (!handle || e.button !== 0 || !this.view.ordered) return;
    e.preventDefault();
    const tr = handle.closest("tr");
    const id = tr.dataset.id;
    const from = this.index.get(id);
    const wrapTop = this.wrap.getBoundingClientRect().top;
    let slot = from;
    let dragging = false;
    const y0 = e.clientY;
    const onMove = (ev) => {
      if (!dragging && Math.abs(ev.clientY - y0) < 4) return;
      if (!dragging) {
        dragging = true;
        tr.classList.add("row-dragging");
        document.body.classList.add("grid-row-moving");
      }
      const y = ev.clientY - wrapTop + this.wrap.scrollTop - this.headH;
      slot = clamp(Math.round(y / this.rowH), 0, this.order.length);
      this.dropLine.hidden = false;
      this.dropLine.className = "grid-drop-line";
      this.dropLine.style.left = `${this.wrap.scrollLeft}px`;
      this.dropLine.style.top = `${this.headH + slot * this.rowH - 1}px`;
      this.dropLine.style.height = "";
      // near an edge: scroll
      const rel = ev.clientY - wrapTop;
      if (rel < this.headH + 12) this.wrap.scrollTop -= this.rowH / 2;
      else if (rel > (this.viewH || 600) - 12) this.wrap.scrollTop += this.rowH / 2;
    };
    const onUp = () => {
      document.removeEventListener("pointermove", onMove);
      document.removeEventListener("pointerup", onUp);
      document.body.classList.remove("grid-row-moving");
      tr.classList.remove("row-dragging");
      this.dropLine.hidden = true;
      if (dragging && slot !== from && slot !== from + 1) this.moveRow(id, slot);
    };
    document.addEventListener("pointermove", onMove);
    document.addEventListener("pointerup", onUp);
  }

  moveRowBy(id, delta) {
    const from = this.index.get(id);
    if (from === undefined) return;
    const to = from + delta;
    if (to < 0 || to >= this.order.length) return;
    this.moveRow(id, delta < 0 ? to : to + 1);
  }

  /** Move record `id` to gap `slot` (0 = before the first row), then tell the controller. */
  async moveRow(id, slot) {
    if (typeof this.ctl.reorder !== "function") return;
    const from = this.index.get(id);
    const ids = this.order.filter((x) => x !== id);
    const at = slot > from ? slot - 1 : slot;
    const after = at > 0 ? ids[at - 1] : null;
    const before = at < ids.length ? ids[at] : null;
    ids.splice(at, 0, id);
    const previous = this.view.order;
    const name = this.recordName(id);
    const hadFocus = this.hasFocus();
    const beforeIdx = this.renderedIndexes();
    this.view.order = ids;
    this.applyOrder();
    this.flip(beforeIdx);
    if (hadFocus && this.active) this.setActive(id, this.active.col);
    announce(`${name} moved to position ${at + 1} of ${ids.length}`);
    try {
      await this.ctl.reorder(id, { after, before });
    } catch (err) {
      if (sameIds(this.view.order, ids)) {
        this.view.order = previous;
        this.applyOrder();
      }
      toast(`Couldn't move ${name}: ${err.message || err}`, { kind: "error" });
    }
  }

  // --- hover: who changed this cell last --------------------------------------------------

  hoverCell(td, at) {
    clearTimeout(this.tipTimer);
    this.hideTip();
    this.hoverTd = td;
    if (!td || typeof this.ctl.lastChange !== "function") return;
    if (performance.now() - this.lastScroll < 250) return; // no requests while scrolling
    this.tipTimer = setTimeout(() => this.showTip(td, at), TIP_DELAY);
  }

  async showTip(td, at) {
    if (this.hoverTd !== td || !td.isConnected || this.editing?.td === td) return;
    const rec = this.records.get(at.id);
    const f = this.cols[at.col]?.field;
    if (!rec || !f) return;
    const k = key(at.id, f.name);
    const sig = JSON.stringify([rec.values, rec.conflicts || null]);
    let hit = this.tips.get(k);
    if (!hit || hit.sig !== sig) {
      hit = { sig, value: this.ctl.lastChange(at.id, f.name) };
      this.tips.set(k, hit);
    }
    let info;
    try {
      info = await hit.value;
    } catch {
      this.tips.delete(k);
      return;
    }
    hit.value = info;
    if (this.hoverTd !== td || !td.isConnected || !info) return;
    const who = info.who || "someone";
    this.tip.textContent = `Last changed by ${who} · ${ago(info.at)}`;
    this.tip.hidden = false;
    const tr = td.parentNode;
    this.tip.style.left = `${td.offsetLeft}px`;
    this.tip.style.top = `${this.headH + (tr._index + 1) * this.rowH + 2}px`;
  }

  hideTip() {
    clearTimeout(this.tipTimer);
    if (this.tip) this.tip.hidden = true;
    this.hoverTd = null;
  }

  // --- editing ----------------------------------------------------------------------------

  startEdit(id, col, { text } = {}) {
    const c = this.cols[col];
    if (!c || c.kind !== "field") return;
    const f = c.field;
    if (f.type === "boolean" || f.type === "blob_ref") return;
    if (this.editing) this.commitEdit({ refocus: false });
    this.setActive(id, col, { focus: false });
    const i = this.index.get(id);
    if (i !== undefined) this.scrollToIndex(i);
    const td = this.cellEl(id, f.name);
    const rec = this.records.get(id);
    if (!td || !rec) return;
    const k = key(id, f.name);
    if (this.errors.delete(k)) this.renderCell(td, rec, f);
    const original = this.valueOf(id, f.name);
    const editor = this.makeEditor(f, original, text);
    this.editing = { id, key: k, field: f, td, editor, original, done: false };
    this.hideTip();
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
