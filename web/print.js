// Printable paperwork (issue 9): a call sheet (crew-calls module) and a cue sheet
// (lighting-cues module). No extra server: while the print dialog is open, the sheet sits in a
// print-only section of the page (#print-sheet, hidden on screen; with body.print-ready,
// print.css shows only it under @media print) and the browser's own print dialog prints it.
// The dialog asks for the day or cue list and shows the same sheet as a preview, with Print.
//
// Every sheet carries the workspace name, when it was printed and the revision stamp of
// GET /workspace/revision ("Rev 1234 · 3fa2c1d0": the same on every peer holding the same
// changes), so two printouts can be compared at a glance. Data is read canonically (staged
// changes of an overlay are not printed), matching the stamp.

import { el } from "./dom.js";
import { modal } from "./dialogs.js";
import { formatDuration } from "./format.js";

const CALLS = "crew_calls.Calls";
const FOR_PERSON = "crew_calls.for_person";
const CUES = "lighting_cues.Cues";
const CUE_LISTS = "lighting_cues.CueLists";
const CUE_STACK = "lighting_cues.cue_stack";

const KINDS = {
  call_sheet: { label: "Call sheet", module: "crew_calls.", needs: CALLS },
  cue_sheet: { label: "Cue sheet", module: "lighting_cues.", needs: CUES },
};

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit",
  hourCycle: "h23" });
const printedFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", year: "numeric",
  month: "long", day: "numeric", timeZone: "UTC" });

let uid = 0;

/** "Saturday, November 21, 2026" for "2026-11-21" (a date field is a calendar day). */
export function dayText(iso) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(iso || ""));
  if (!m) return String(iso || "");
  return dayFmt.format(new Date(Date.UTC(+m[1], +m[2] - 1, +m[3])));
}

/** Today as YYYY-MM-DD in the user's time zone. */
function today() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

function text(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return "";
  return String(v);
}

/** A person's name from a record's values (Crew `name`, Contacts `full_name`, else text). */
function personName(values) {
  if (!values) return "";
  for (const k of ["name", "full_name", "display_name"]) {
    if (typeof values[k] === "string" && values[k]) return values[k];
  }
  const first = Object.values(values).find((v) => typeof v === "string" && v);
  return first || "";
}

export class Print {
  /** ctx = {api, toast, tables(), tableById(id), workspace(): {name}} */
  constructor(ctx) {
    this.ctx = ctx;
    this.dialog = null;
  }

  /** The sheets offered for the open table: [{kind, label}]. */
  available(tableId) {
    if (!tableId) return [];
    const out = [];
    for (const [kind, k] of Object.entries(KINDS)) {
      if (tableId.startsWith(k.module) && this.ctx.tableById(k.needs)) {
        out.push({ kind, label: k.label });
      }
    }
    return out;
  }

  /** Open the first sheet offered for a table (the toolbar's Print… button). */
  async openFor(tableId) {
    const [first] = this.available(tableId);
    if (!first) {
      this.ctx.toast("Nothing to print for this table. Call sheets print from Crew Calls, " +
        "cue sheets from Lighting Cues.");
      return;
    }
    try {
      await this.open(first.kind, {});
    } catch (e) {
      this.ctx.toast(`Couldn't open the print view: ${e.message || e}`, { kind: "error" });
    }
  }

  /** kind "call_sheet" ({day}) or "cue_sheet" ({cue_list_id}): ask, preview, print. */
  async open(kind, options = {}) {
    if (!KINDS[kind]) throw new Error(`unknown sheet ${kind}`);
    if (this.dialog) this.dialog.close(null);
    const n = ++uid;
    const preview = el("div", { class: "print-preview", role: "region", tabindex: "0",
      "aria-label": "Print preview" });
    const status = el("p", { class: "print-status muted", role: "status", "aria-live": "polite" });
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    let picker;
    let current = null;
    let latest = 0;
    const render = async () => {
      const mine = ++latest;
      error.hidden = true;
      status.textContent = "Preparing…";
      try {
        const sheet = kind === "call_sheet"
          ? await this.callSheet(picker.value)
          : await this.cueSheet(picker.value);
        if (mine !== latest || this.dialog !== m) return;  // superseded, or closed
        current = sheet;
        preview.replaceChildren(current.cloneNode(true));
        this.place(current);
        status.textContent = "";
        printBtn.disabled = false;
      } catch (e) {
        if (mine !== latest || this.dialog !== m) return;
        current = null;
        preview.replaceChildren();
        this.clear();
        status.textContent = "";
        error.textContent = `Couldn't prepare the sheet: ${e.message || e}`;
        error.hidden = false;
        printBtn.disabled = true;
      }
    };
    let field;
    if (kind === "call_sheet") {
      picker = el("input", { id: `print-day-${n}`, class: "input", type: "date" });
      picker.value = options.day || await this.defaultDay();
      field = el("div", { class: "print-pick" },
        el("label", { class: "label", for: picker.id, text: "Day" }), picker);
    } else {
      picker = el("select", { id: `print-list-${n}`, class: "input" });
      let lists = [];
      try {
        lists = await this.cueLists();
      } catch (e) {
        error.textContent = `Couldn't load the cue lists: ${e.message || e}`;
        error.hidden = false;
      }
      for (const l of lists) picker.append(el("option", { value: l.id, text: l.name }));
      if (!lists.length) {
        picker.append(el("option", { value: "", text: "No cue lists yet" }));  // sheet says so
        picker.disabled = true;
      }
      if (options.cue_list_id) picker.value = options.cue_list_id;
      field = el("div", { class: "print-pick" },
        el("label", { class: "label", for: picker.id, text: "Cue list" }), picker);
    }
    const m = modal({
      title: `Print ${KINDS[kind].label.toLowerCase()}`,
      wide: true,
      cls: "print-dialog",
      body: [field, status, error, preview],
      actions: [
        { label: "Cancel" },
        { label: "Print", kind: "btn-primary", id: `print-go-${n}`,
          run: () => { if (current) window.print(); } },
      ],
    });
    const printBtn = m.foot.querySelector(`#print-go-${n}`);
    printBtn.disabled = true;
    this.dialog = m;
    m.done.then(() => {
      if (this.dialog !== m) return;
      this.dialog = null;
      this.clear();  // Ctrl+P on the app prints the app again
    });
    picker.addEventListener("change", () => render());
    picker.focus();
    await render();
    return m;
  }

  /** Put the sheet into the print-only section: while it holds one, printing the page
   * (the Print button, or Ctrl+P) prints only the sheet. */
  place(sheet) {
    let host = document.getElementById("print-sheet");
    if (!host) {
      host = el("section", { id: "print-sheet", class: "print-sheet", "aria-label": "Printout" });
      document.body.append(host);
    }
    host.replaceChildren(sheet.cloneNode(true));
    document.body.classList.add("print-ready");
  }

  clear() {
    const host = document.getElementById("print-sheet");
    if (host) host.replaceChildren();
    document.body.classList.remove("print-ready");
  }

  // --- data ---------------------------------------------------------------------------------

  async stamp() {
    const rev = await this.ctx.api.get("/workspace/revision");
    return rev.stamp;
  }

  async records(table) {
    return (await this.ctx.api.get("/records/list", { table, canonical: 1 })).records;
  }

  /** The next day on or after today that has calls, else the last day with calls, else today. */
  async defaultDay() {
    try {
      const days = [...new Set((await this.records(CALLS)).map((r) => r.values.day)
        .filter(Boolean))].sort();
      const t = today();
      return days.find((d) => d >= t) || days[days.length - 1] || t;
    } catch {
      return today();
    }
  }

  async cueLists() {
    const lists = await this.records(CUE_LISTS);
    return lists.map((r) => ({ id: r.id, name: personName(r.values) || "Untitled list" }))
      .sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  }

  async callSheet(day) {
    const [calls, edges, stamp] = await Promise.all([
      this.records(CALLS),
      this.ctx.api.get("/edges/list", { type: FOR_PERSON }).then((r) => r.edges)
        .catch(() => []),
      this.stamp(),
    ]);
    const rows = calls.filter((r) => r.values.day === day);
    rows.sort((a, b) => (a.values.call_time ?? Infinity) - (b.values.call_time ?? Infinity) ||
      text(a.values.label).localeCompare(text(b.values.label)));
    const link = new Map();
    for (const g of edges) if (!link.has(g.src)) link.set(g.src, g);
    const people = new Map();
    await Promise.all([...new Set(rows.map((r) => link.get(r.id)?.dst).filter(Boolean))]
      .map(async (id) => {
        try {
          people.set(id, (await this.ctx.api.get(`/records/${id}`, { canonical: 1 })).values);
        } catch {
          people.set(id, null);
        }
      }));
    const body = rows.map((r) => {
      const g = link.get(r.id);
      const person = g ? people.get(g.dst) : null;
      const role = (g && g.props && g.props.role_today) || (person && person.role) || "";
      return [
        r.values.call_time != null ? timeFmt.format(new Date(r.values.call_time)) : "",
        personName(person) || "",
        text(role),
        text(r.values.label),
        text(r.values.location),
        text(r.values.notes),
      ];
    });
    return this.sheet({
      kind: "call_sheet",
      title: "Call sheet",
      subtitle: dayText(day) || "No day chosen",
      count: `${rows.length} ${rows.length === 1 ? "call" : "calls"}`,
      head: ["Time", "Person", "Role", "Call", "Location", "Notes"],
      rows: body,
      empty: "No calls on this day.",
      stamp,
    });
  }

  async cueSheet(listId) {
    if (!listId) {
      return this.sheet({ kind: "cue_sheet", title: "Cue sheet", subtitle: "No cue list",
        count: "0 cues", head: [], rows: [], empty: "Create a cue list first.",
        stamp: await this.stamp() });
    }
    const [lists, cues, edges, stamp] = await Promise.all([
      this.records(CUE_LISTS),
      this.records(CUES),
      this.ctx.api.get("/edges/list", { entity: listId, type: CUE_STACK, direction: "in" })
        .then((r) => r.edges),
      this.stamp(),
    ]);
    const list = lists.find((r) => r.id === listId);
    const byId = new Map(cues.map((r) => [r.id, r]));
    // /edges/list gives an ordered type's edges in stack order
    const rows = edges.map((g) => byId.get(g.src)).filter(Boolean).map((r) => [
      text(r.values.number),
      text(r.values.label),
      typeof r.values.time === "number" ? formatDuration(r.values.time) : "",
      text(r.values.page),
      text(r.values.notes),
    ]);
    return this.sheet({
      kind: "cue_sheet",
      title: "Cue sheet",
      subtitle: list ? personName(list.values) || "Untitled list" : "Cue list",
      count: `${rows.length} ${rows.length === 1 ? "cue" : "cues"}`,
      head: ["Cue", "Label", "Time", "Page", "Notes"],
      rows,
      empty: "This cue list has no cues yet.",
      stamp,
    });
  }

  /** The sheet's DOM: a header (workspace, title, printed, revision) and one table. */
  sheet({ kind, title, subtitle, count, head, rows, empty, stamp }) {
    const ws = (this.ctx.workspace && this.ctx.workspace()) || {};
    const printed = `Printed ${printedFmt.format(new Date())}`;
    const meta = el("p", { class: "print-meta" },
      el("span", { class: "print-printed", text: printed }),
      el("span", { class: "print-sep", text: " · " }),
      el("span", { class: "print-rev", text: stamp }));
    const header = el("header", { class: "print-head" },
      el("p", { class: "print-ws", text: ws.name || "Workspace" }),
      // h3: in the preview it sits under the dialog's own h2 heading
      el("h3", { class: "print-title", text: `${title} — ${subtitle}` }),
      el("p", { class: "print-count", text: count }),
      meta);
    let table;
    if (rows.length) {
      table = el("table", { class: "print-table" },
        el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, ...rows.map((cells) =>
          el("tr", {}, ...cells.map((c, i) => el("td", { "data-col": head[i], text: c }))))));
    } else {
      table = el("p", { class: "print-empty", text: empty });
    }
    const foot = el("footer", { class: "print-foot" },
      el("span", { text: `${ws.name || "Workspace"} · ${title}` }),
      el("span", { text: stamp }));
    return el("article", { class: `print-doc print-${kind.replace("_", "-")}` },
      header, table, foot);
  }
}
