// The view toolbar under a table's title (spec 05 §4 "Search, filter, sort"; J8): quick Search,
// Filter, Sort and Fields popovers, and the Stack picker for tables that are the `from` side of
// an ordered link type (a cue stack). It edits the user's view settings through its context and
// holds no records: app.js applies the settings (viewstate.js), shows the result and saves them.

import { el } from "./dom.js";
import { icon } from "./icons.js";
import { choicesOf, formatDuration, parseDuration } from "./format.js";
import { allColumns, filterKind, opsFor } from "./viewstate.js";

// the toolbar's own glyphs, drawn like icons.js's (decorative: every control has a label)
const GLYPHS = {
  search: '<circle cx="7" cy="7" r="4.5"/><path d="m10.5 10.5 3 3"/>',
  filter: '<path d="M2 3h12L9.5 8.5V13l-3-1.5v-3z"/>',
  sort: '<path d="M5 2.5v11M2.5 11 5 13.5 7.5 11M11 13.5v-11M8.5 5 11 2.5 13.5 5"/>',
  fields: '<rect x="2" y="3" width="12" height="10" rx="1.5"/><path d="M6 3v10M10 3v10"/>',
};

function glyph(name, cls = "vb-glyph") {
  const span = el("span", { class: cls, "aria-hidden": "true" });
  span.innerHTML = '<svg viewBox="0 0 16 16" width="14" height="14" fill="none" ' +
    'stroke="currentColor" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round" ' +
    `focusable="false">${GLYPHS[name]}</svg>`;
  return span;
}

const DIRS = [["asc", "Ascending (A → Z, 1 → 9)"], ["desc", "Descending (Z → A, 9 → 1)"]];

let uid = 0;

export class ViewBar {
  /**
   * @param {HTMLElement} host  the `.viewbar` row
   * @param {object} ctx
   *   table(): the open table's definition (or null)
   *   settings(): its view settings
   *   change(fn, {structural}): let fn(settings) edit them; app.js re-applies and saves
   *   stacks(): [{edge_type, label, parent_table}] the table can be shown as
   *   stackParents(stack): Promise<[{id, label}]> the records a stack can be shown for
   *   focusGrid(): put the keyboard focus back on the grid
   */
  constructor(host, ctx) {
    this.host = host;
    this.ctx = ctx;
    this.open = null; // name of the open popover
    this.pops = new Map(); // name -> {btn, panel, build, title}
    this.parents = []; // [{stack, id, label}] options of the Stack picker
    this.build();
    document.addEventListener("mousedown", (e) => {
      if (!this.open) return;
      const p = this.pops.get(this.open);
      if (!p.wrap.contains(e.target)) this.close({ focus: false });
    });
  }

  // --- building ---------------------------------------------------------------------------

  build() {
    const searchId = `vb-search-${++uid}`;
    this.search = el("input", {
      type: "search", id: searchId, class: "vb-search-input", placeholder: "Search",
      "aria-label": "Search this table", autocomplete: "off", spellcheck: "false",
      "aria-keyshortcuts": "Control+F Meta+F",
      title: "Search every shown column (Ctrl+F or ⌘F); Esc clears",
    });
    const searchBox = el("div", { class: "vb-search", role: "search" },
      glyph("search", "vb-search-glyph"), this.search);
    this.search.addEventListener("input", () => {
      const v = this.search.value;
      this.ctx.change((s) => { s.search = v; });
    });
    this.search.addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      e.preventDefault();
      e.stopPropagation();
      if (this.search.value) {
        this.search.value = "";
        this.ctx.change((s) => { s.search = ""; });
      } else {
        this.ctx.focusGrid();
      }
    });
    this.filterBtn = this.popover("filter", "Filters", () => this.buildFilters());
    this.sortBtn = this.popover("sort", "Sort", () => this.buildSort());
    this.fieldsBtn = this.popover("fields", "Fields", () => this.buildFields());

    this.stackSel = el("select", { class: "vb-stack-select", id: `vb-stack-${uid}` });
    this.stackSel.addEventListener("change", () => this.onStackPick());
    this.stackBox = el("label", { class: "vb-stack", for: this.stackSel.id, hidden: true },
      el("span", { class: "vb-stack-label", text: "Stack" }), this.stackSel);
    this.hint = el("span", { class: "vb-hint", role: "status" });
    this.host.replaceChildren(searchBox, this.pops.get("filter").wrap,
      this.pops.get("sort").wrap, this.pops.get("fields").wrap, this.stackBox, this.hint);
  }

  popover(name, title, build) {
    const panelId = `vb-pop-${name}-${++uid}`;
    const btn = el("button", {
      type: "button", class: "btn btn-ghost btn-sm vb-btn", "aria-expanded": "false",
      "aria-controls": panelId, "aria-haspopup": "dialog", "data-pop": name,
    });
    const panel = el("div", {
      class: "vb-pop", id: panelId, role: "dialog", "aria-label": title, hidden: true,
    });
    const wrap = el("div", { class: "vb-item" }, btn, panel);
    btn.addEventListener("click", () => (this.open === name ? this.close() : this.show(name)));
    panel.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        this.close();
      }
    });
    this.pops.set(name, { btn, panel, wrap, build, title });
    return btn;
  }

  show(name) {
    if (this.open && this.open !== name) this.close({ focus: false });
    const p = this.pops.get(name);
    this.open = name;
    p.btn.setAttribute("aria-expanded", "true");
    p.panel.hidden = false;
    this.refill(name);
    const first = p.panel.querySelector("select, input, button");
    if (first) first.focus();
  }

  close({ focus = true } = {}) {
    if (!this.open) return;
    const p = this.pops.get(this.open);
    this.open = null;
    p.btn.setAttribute("aria-expanded", "false");
    p.panel.hidden = true;
    p.panel.replaceChildren();
    if (focus) p.btn.focus();
  }

  /** Rebuild an open popover's content, keeping the focus on the control with the same key. */
  refill(name) {
    const p = this.pops.get(name);
    if (this.open !== name) return;
    const key = p.panel.contains(document.activeElement)
      ? document.activeElement.dataset.key : null;
    p.panel.replaceChildren(el("h2", { class: "vb-pop-title", text: p.title }), ...p.build());
    const again = key && p.panel.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again && !again.disabled) again.focus();
    else if (key) (p.panel.querySelector("button:not([disabled]), select, input") || p.btn).focus();
  }

  // --- state to controls ------------------------------------------------------------------

  /** Show the current table's settings (after a table opens or its settings/schema change);
   * refill: false keeps an open popover as it is (the user is typing in it). */
  render({ refill = true } = {}) {
    const t = this.ctx.table();
    const s = this.ctx.settings();
    if (!t || !s) return;
    if (document.activeElement !== this.search) this.search.value = s.search || "";
    const known = new Set(t.fields.map((f) => f.name));
    const nf = (s.filters || []).filter((f) => known.has(f.field)).length;
    const ns = (s.sort || []).filter((x) => known.has(x.field)).length;
    const hidden = allColumns(t, s).filter((c) => c.hidden).length;
    this.label(this.filterBtn, "filter", "Filter", nf ? `(${nf})` : "");
    this.label(this.sortBtn, "sort", "Sort", ns ? `(${ns})` : "");
    this.label(this.fieldsBtn, "fields", "Fields", hidden ? `(${hidden} hidden)` : "");
    this.filterBtn.dataset.active = nf ? "true" : "false";
    this.sortBtn.dataset.active = ns ? "true" : "false";
    this.fieldsBtn.dataset.active = hidden ? "true" : "false";
    if (this.open && refill) this.refill(this.open);
    if (refill || !this.stackSel.options.length) this.renderStack();
  }

  label(btn, name, text, extra) {
    btn.replaceChildren(glyph(name), el("span", { text }),
      ...(extra ? [el("span", { class: "vb-count", text: extra })] : []));
  }

  setHint(text) {
    this.hint.textContent = text || "";
    this.hint.hidden = !text;
  }

  focusSearch() {
    this.search.focus();
    this.search.select();
  }

  // --- Stack (J8) -------------------------------------------------------------------------

  async renderStack() {
    const t = this.ctx.table();
    const stacks = this.ctx.stacks() || [];
    this.stackBox.hidden = !stacks.length;
    if (!stacks.length || !t) {
      this.parents = [];
      this.stackSel.replaceChildren();
      return;
    }
    const lists = await Promise.all(stacks.map((st) => this.ctx.stackParents(st)
      .then((ps) => ps.map((p) => ({ stack: st, ...p }))).catch(() => [])));
    if (this.ctx.table() !== t) return;
    this.parents = lists.flat();
    const cur = this.ctx.settings().stack;
    const opts = [el("option", { value: "", text: `All ${t.label.toLowerCase()}` })];
    let i = 0;
    for (const [k, st] of stacks.entries()) {
      const items = lists[k].map((p) => {
        const idx = i++;
        const on = !!cur && cur.edge_type === st.edge_type && cur.parent === p.id;
        return el("option", { value: String(idx), text: p.label, selected: on });
      });
      if (stacks.length > 1) opts.push(el("optgroup", { label: st.label }, ...items));
      else opts.push(...items);
    }
    const sel = cur ? this.parents.findIndex((p) => p.stack.edge_type === cur.edge_type &&
      p.id === cur.parent) : -1;
    if (cur && sel < 0) {
      // the shown list was deleted (or has not arrived yet): say so rather than "All"
      opts.push(el("option", { value: "missing", text: "A list that is not here", disabled: true }));
    }
    this.stackSel.replaceChildren(...opts);
    this.stackSel.value = sel >= 0 ? String(sel) : cur ? "missing" : "";
    this.stackSel.title = `Show only the ${t.label.toLowerCase()} of one ` +
      `${stacks.map((x) => x.label.toLowerCase()).join(" or ")}, in their order`;
  }

  onStackPick() {
    const v = this.stackSel.value;
    const p = v === "" ? null : this.parents[Number(v)];
    this.ctx.change((s) => {
      s.stack = p ? { edge_type: p.stack.edge_type, parent: p.id } : null;
    }, { structural: true });
  }

  // --- Filter -----------------------------------------------------------------------------

  buildFilters() {
    const t = this.ctx.table();
    const s = this.ctx.settings();
    const fields = t.fields;
    const rows = [];
    (s.filters || []).forEach((f, i) => {
      const field = fields.find((x) => x.name === f.field);
      if (!field) return; // a field not here (yet): kept, not shown
      rows.push(this.filterRow(t, f, i, field));
    });
    const add = el("button", {
      type: "button", class: "btn btn-secondary btn-sm", "data-key": "filter-add",
    });
    add.innerHTML = icon("plus");
    add.append("Add filter");
    add.addEventListener("click", () => {
      const f = fields[0];
      this.ctx.change((st) => {
        st.filters = [...(st.filters || []), { field: f.name, op: opsFor(f)[0].op }];
      }, { structural: true });
      const last = [...this.pops.get("filter").panel.querySelectorAll(".vb-filter-field")].pop();
      if (last) last.focus();
    });
    const empty = rows.length ? [] : [el("p", { class: "vb-empty",
      text: "No filters: every record is shown." })];
    return [...empty, el("div", { class: "vb-rows" }, ...rows), add];
  }

  filterRow(t, f, i, field) {
    const set = (fn, structural = false) => this.ctx.change((st) => {
      const cur = st.filters[i];
      if (cur) fn(cur);
    }, { structural });
    const fieldSel = el("select", {
      class: "vb-filter-field", "aria-label": `Filter ${i + 1}: field`, "data-key": `f${i}-field`,
    }, ...t.fields.map((x) => el("option", { value: x.name, text: x.label,
      selected: x.name === field.name })));
    fieldSel.addEventListener("change", () => {
      const nf = t.fields.find((x) => x.name === fieldSel.value);
      set((cur) => {
        cur.field = nf.name;
        cur.op = opsFor(nf)[0].op;
        delete cur.value;
      }, true);
    });
    const ops = opsFor(field);
    const spec = ops.find((o) => o.op === f.op) || ops[0];
    const opSel = el("select", {
      class: "vb-filter-op", "aria-label": `Filter ${i + 1}: condition`, "data-key": `f${i}-op`,
    }, ...ops.map((o) => el("option", { value: o.op, text: o.label, selected: o === spec })));
    opSel.addEventListener("change", () => {
      const next = ops.find((o) => o.op === opSel.value);
      set((cur) => {
        cur.op = next.op;
        if (next.value !== spec.value) delete cur.value;
      }, true);
    });
    const value = this.valueInput(field, f, spec, i, set);
    const rm = el("button", {
      type: "button", class: "btn btn-ghost btn-sm vb-icon-btn", "data-key": `f${i}-rm`,
      "aria-label": `Remove filter ${i + 1}: ${field.label}`, title: "Remove this filter",
    });
    rm.innerHTML = icon("close");
    rm.addEventListener("click", () => this.ctx.change((st) => {
      st.filters = st.filters.filter((_, k) => k !== i);
    }, { structural: true }));
    return el("div", { class: "vb-row vb-filter", "data-kind": filterKind(field) },
      fieldSel, opSel, ...(value ? [value] : []), rm);
  }

  valueInput(field, f, spec, i, set) {
    if (!spec.value) return null;
    const aria = `Filter ${i + 1}: value`;
    if (spec.value === "choices") {
      const chosen = new Set(Array.isArray(f.value) ? f.value : []);
      const boxes = choicesOf(field).map((c, k) => {
        const box = el("input", { type: "checkbox", value: c.key, checked: chosen.has(c.key),
          "data-key": `f${i}-c${k}` });
        box.addEventListener("change", () => {
          const keys = [...fs.querySelectorAll("input:checked")].map((x) => x.value);
          set((cur) => { cur.value = keys; });
        });
        return el("label", { class: "vb-choice" }, box, el("span", { text: c.label }));
      });
      const fs = el("fieldset", { class: "vb-choices" },
        el("legend", { class: "sr-only", text: aria }), ...boxes);
      if (!boxes.length) fs.append(el("span", { class: "vb-empty", text: "No choices" }));
      return fs;
    }
    const isDuration = field.type === "duration";
    const type = spec.value === "date" ? "date" : spec.value === "number" && !isDuration
      ? "number" : "text";
    let initial = f.value ?? "";
    if (isDuration && typeof f.value === "number") initial = formatDuration(f.value);
    const input = el("input", {
      type, class: "vb-filter-value", "aria-label": aria, "data-key": `f${i}-value`,
      value: String(initial), step: type === "number" ? "any" : null,
      placeholder: isDuration ? "h:mm:ss" : spec.value === "text" ? "Text" : null,
    });
    input.addEventListener("input", () => {
      const raw = input.value;
      let v;
      if (spec.value === "number") {
        v = isDuration ? parseDuration(raw) : raw.trim() === "" ? null : Number(raw);
        if (v !== null && !Number.isFinite(v)) v = null;
      } else {
        v = raw === "" ? null : raw;
      }
      set((cur) => {
        if (v === null) delete cur.value;
        else cur.value = v;
      });
    });
    return input;
  }

  // --- Sort -------------------------------------------------------------------------------

  buildSort() {
    const t = this.ctx.table();
    const s = this.ctx.settings();
    const levels = (s.sort || []).map((l, i) => ({ ...l, i }))
      .filter((l) => t.fields.some((f) => f.name === l.field));
    const rows = levels.map((l, n) => this.sortRow(t, l, n, levels.length));
    const add = el("button", {
      type: "button", class: "btn btn-secondary btn-sm", "data-key": "sort-add",
    });
    add.innerHTML = icon("plus");
    add.append(levels.length ? "Add another sort level" : "Add a sort level");
    const unused = t.fields.find((f) => !levels.some((l) => l.field === f.name));
    add.disabled = !unused;
    add.addEventListener("click", () => {
      this.ctx.change((st) => {
        st.sort = [...(st.sort || []), { field: unused.name, dir: "asc" }];
      }, { structural: true });
    });
    const out = [];
    if (s.stack) {
      out.push(el("p", { class: "vb-note", text: "Sorting is off while a stack is shown: " +
        "its own order is used. Choose “All” under Stack to sort." }));
    }
    if (!rows.length) out.push(el("p", { class: "vb-empty", text: "Not sorted: records are " +
      "in the order they were made." }));
    out.push(el("div", { class: "vb-rows" }, ...rows), add);
    return out;
  }

  sortRow(t, l, n, count) {
    const idx = l.i;
    const change = (fn) => this.ctx.change((st) => fn(st.sort), { structural: true });
    const fieldSel = el("select", {
      "aria-label": `Sort level ${n + 1}: field`, "data-key": `s${n}-field`,
    }, ...t.fields.map((f) => el("option", { value: f.name, text: f.label,
      selected: f.name === l.field })));
    fieldSel.addEventListener("change", () => change((sort) => { sort[idx].field = fieldSel.value; }));
    const dirSel = el("select", {
      "aria-label": `Sort level ${n + 1}: direction`, "data-key": `s${n}-dir`,
    }, ...DIRS.map(([v, text]) => el("option", { value: v, text, selected: v === l.dir })));
    dirSel.addEventListener("change", () => change((sort) => { sort[idx].dir = dirSel.value; }));
    const move = (d, label, glyph) => {
      const b = el("button", {
        type: "button", class: "btn btn-ghost btn-sm vb-icon-btn", "data-key": `s${n}-${d}`,
        "aria-label": `Move sort level ${n + 1} ${label}`, title: `Move ${label}`, text: glyph,
        disabled: (d === "up" && n === 0) || (d === "down" && n === count - 1),
      });
      b.addEventListener("click", () => change((sort) => {
        const j = d === "up" ? idx - 1 : idx + 1;
        if (j < 0 || j >= sort.length) return;
        [sort[idx], sort[j]] = [sort[j], sort[idx]];
      }));
      return b;
    };
    const rm = el("button", {
      type: "button", class: "btn btn-ghost btn-sm vb-icon-btn", "data-key": `s${n}-rm`,
      "aria-label": `Remove sort level ${n + 1}`, title: "Remove this sort level",
    });
    rm.innerHTML = icon("close");
    rm.addEventListener("click", () => change((sort) => { sort.splice(idx, 1); }));
    return el("div", { class: "vb-row vb-sort" },
      el("span", { class: "vb-lead", text: n === 0 ? "Sort by" : "then by" }),
      fieldSel, dirSel, move("up", "up", "↑"), move("down", "down", "↓"), rm);
  }

  // --- Fields -----------------------------------------------------------------------------

  buildFields() {
    const t = this.ctx.table();
    const cols = allColumns(t, this.ctx.settings());
    const shown = cols.filter((c) => !c.hidden).length;
    const save = (fn) => this.ctx.change((st) => {
      const list = allColumns(t, st).map((c) => {
        const o = { name: c.name, hidden: c.hidden };
        if (c.width) o.width = c.width;
        return o;
      });
      fn(list);
      // keep settings of fields not here (yet) at the end
      const names = new Set(list.map((c) => c.name));
      st.columns = [...list, ...(st.columns || []).filter((c) => !names.has(c.name))];
    }, { structural: true });
    const items = cols.map((c, i) => {
      const box = el("input", {
        type: "checkbox", checked: !c.hidden, "data-key": `c-${c.name}-show`,
        disabled: !c.hidden && shown === 1, // one column stays
      });
      box.addEventListener("change", () => save((list) => { list[i].hidden = !box.checked; }));
      const move = (d, glyph) => {
        const b = el("button", {
          type: "button", class: "btn btn-ghost btn-sm vb-icon-btn", text: glyph,
          "data-key": `c-${c.name}-${d}`, "aria-label": `Move ${c.field.label} ${d}`,
          title: `Move ${d}`, disabled: (d === "up" && i === 0) ||
            (d === "down" && i === cols.length - 1),
        });
        b.addEventListener("click", () => save((list) => {
          const j = d === "up" ? i - 1 : i + 1;
          [list[i], list[j]] = [list[j], list[i]];
        }));
        return b;
      };
      return el("li", { class: "vb-field", "data-hidden": c.hidden ? "true" : "false" },
        el("label", { class: "vb-field-label" }, box, el("span", { text: c.field.label })),
        el("span", { class: "vb-field-state", text: c.hidden ? "Hidden" : "" }),
        move("up", "↑"), move("down", "↓"));
    });
    const all = el("button", {
      type: "button", class: "btn btn-ghost btn-sm", text: "Show all", "data-key": "c-all",
      disabled: shown === cols.length,
    });
    all.addEventListener("click", () => save((list) => {
      for (const c of list) c.hidden = false;
    }));
    return [el("ul", { class: "vb-fields", "aria-label": "Fields, in column order" }, ...items),
      all];
  }
}
