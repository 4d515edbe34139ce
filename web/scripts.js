// Scripts in the UI (spec 05 J14; spec 04 §7): the Scripts panel (the scripts of adopted
// modules with what they take and ask for, Run for manual scripts, this user's on/off switch
// for on-change scripts, recent runs) and the run dialog (a form for the script's typed
// arguments, the Allow once / Always / Never question for capabilities, progress with Cancel,
// the log, and on completion the staged changes with Commit / Discard). The engine runs,
// checks and stages everything; the UI shows what GET /scripts/list, GET /scripts/runs and
// GET /overlays/<id>/changes answer and re-asks when an event says something changed.

import * as api from "./api.js";
import * as F from "./format.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal, confirmDialog } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { coalesced, when } from "./conflicts.js";
import { editScript } from "./script_editor.js";

const $ = (id) => document.getElementById(id);
const plural = (n, one, many) => (n === 1 ? `1 ${one}` : `${n} ${many}`);
const SHOWN_RUNS = 8;
const SHOWN_RECORDS = 100;

/** "call_time" -> "Call time". */
export function humanize(name) {
  const s = String(name).replace(/_/g, " ").trim();
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

/** What a capability lets a script do, in plain words ("show you notifications"). */
export function capabilityWords(cap, moduleName = (id) => id) {
  const [kind, arg = ""] = String(cap).split(/:(.*)/s);
  switch (kind) {
    case "ui.notify": return "show you notifications";
    case "fs.read": return `read files matching ${arg} in your exchange folder`;
    case "fs.write": return `create or overwrite files matching ${arg} in your exchange folder`;
    case "data.write": {
      const [mod, table] = arg.split(/\.(.*)/s);
      const name = moduleName(mod) || mod;
      return table ? `change records in ${table} (${name})`
        : `change records in the tables of ${name}`;
    }
    default: return cap;
  }
}

// what an uncaught core.* error (04 §7.3) means, before its own message
const CORE_ERRORS = {
  BadArgument: "a call to openprod went wrong",
  UnknownTable: "it names something this workspace doesn't have",
  UnknownField: "it names something this workspace doesn't have",
  UnknownEdgeType: "it names something this workspace doesn't have",
  NotFound: "something it needed is gone",
  EntityDeleted: "something it needed is gone",
  NotMember: "a record isn't in the table it expected",
  TypeMismatch: "a value doesn't fit its field",
  Required: "a required field would be left empty",
  CapabilityDenied: "it isn't allowed to do that",
  UndeclaredWrite: "it changed something it doesn't declare",
  LimitExceeded: "it went over a limit",
  IOError: "a file couldn't be read or written",
};

/** A failed run's error in plain words (04 §7.6 codes). */
export function failureText(error, info) {
  const e = error || {};
  const limits = (info && info.limits) || {};
  let msg = String(e.message || "").replace(/^[^\s:]+\.lua:\d+: /, "");
  const core = /^([A-Za-z]+): (.*)$/s.exec(msg);
  if (core && CORE_ERRORS[core[1]]) msg = `${CORE_ERRORS[core[1]]} (${core[2]})`;
  switch (e.code) {
    case "TimeLimit":
      return `It ran longer than ${limits.timeout_s ?? 30} s and was stopped. Nothing was changed.`;
    case "MemoryLimit":
      return `It used too much memory (more than ${limits.memory_mib ?? 16} MiB) and was ` +
        "stopped. Nothing was changed.";
    case "InstructionLimit":
      return "It did too much work and was stopped (it may be stuck in a loop). " +
        "Nothing was changed.";
    case "Cancelled":
      return "Cancelled. Nothing was changed.";
    case "HostCrashed":
      return "The script engine stopped unexpectedly. Nothing was changed; try again.";
    default: {
      const where = typeof e.line === "number" ? `The script stopped at line ${e.line}`
        : "The script stopped";
      return `${where}: ${msg || "an error"}${/[.!?]$/.test(msg) ? "" : "."} ` +
        "Nothing was changed.";
    }
  }
}

/** The value an argument's input holds, as sent to the engine (null when empty). */
function argValue(type, input) {
  switch (type) {
    case "boolean": return input.checked;
    case "integer":
    case "float": return input.value === "" ? null : Number(input.value);
    case "datetime": {
      if (!input.value) return null;
      const t = new Date(input.value).getTime();
      return Number.isNaN(t) ? input.value : t;
    }
    case "duration": {
      if (!input.value.trim()) return null;
      const ms = F.parseDuration(input.value);
      return ms === null ? input.value : ms;
    }
    default: return input.value === "" ? null : input.value;
  }
}

function argInput(type, id, previous) {
  const attrs = { id, class: "input", autocomplete: "off" };
  let input;
  switch (type) {
    case "boolean":
      input = el("input", { id, type: "checkbox" });
      input.checked = previous === true;
      return input;
    case "integer": input = el("input", { ...attrs, type: "number", step: "1" }); break;
    case "float": input = el("input", { ...attrs, type: "number", step: "any" }); break;
    case "date": input = el("input", { ...attrs, type: "date" }); break;
    case "datetime": input = el("input", { ...attrs, type: "datetime-local" }); break;
    case "duration": input = el("input", { ...attrs, type: "text", placeholder: "h:mm:ss" }); break;
    case "entity_ref": input = el("input", { ...attrs, type: "text", placeholder: "a record id" });
      break;
    default: input = el("input", { ...attrs, type: "text" });
  }
  if (previous !== undefined && previous !== null) {
    input.value = type === "datetime" ? F.toDateTimeLocal(previous)
      : type === "duration" ? F.formatDuration(previous) : String(previous);
  }
  return input;
}

/**
 * @param {object} ctx
 *   reportError(err, what), afterWrite(seq): Promise (re-query the rows and the workspace),
 *   tableById(id), recordName(entityId, tableId): Promise<string>, moduleName(id),
 *   ruleLabel(id), reloadRules(): Promise, refreshOverlays(): Promise,
 *   openInStaging(overlayId): Promise
 */
export class Scripts {
  constructor(ctx) {
    this.ctx = ctx;
    this.scripts = [];
    this.runs = []; // GET /scripts/runs, oldest first
    this.overlays = new Set(); // ids of the overlays that still exist here
    this.progress = new Map(); // run id -> op_count of its last script_progress
    this.outcome = new Map(); // run id -> "committed" | "discarded" (done from this page)
    this.errors = new Map(); // script id -> message shown under it until its next success
    this.busy = new Set();
    this.panel = null;
    this.dialogs = new Set(); // open run dialogs
    this.refreshList = coalesced(() => this.loadList());
    this.refreshRuns = coalesced(() => this.loadRuns());
    $("scripts-btn").addEventListener("click", () => this.openPanel()
      .catch((e) => this.ctx.reportError(e, "Couldn't open the scripts")));
  }

  reload() {
    return Promise.all([this.refreshList(), this.refreshRuns()]);
  }

  async loadList() {
    const r = await api.get("/scripts/list");
    this.scripts = (r.scripts || []).slice().sort((a, b) =>
      this.moduleLabel(a.module).localeCompare(this.moduleLabel(b.module)) ||
      (a.trigger === b.trigger ? 0 : a.trigger === "manual" ? -1 : 1) ||
      String(a.label).localeCompare(String(b.label)));
    this.render();
  }

  async loadRuns() {
    const [r, o] = await Promise.all([api.get("/scripts/runs"), api.get("/overlays/list")]);
    this.runs = r.runs || [];
    this.overlays = new Set((o.overlays || []).map((x) => x.id));
    for (const run of this.runs) if (run.status !== "running") this.progress.delete(run.run_id);
    this.renderBadge();
    this.render();
  }

  info(scriptId) {
    return this.scripts.find((s) => s.id === scriptId) || null;
  }

  moduleLabel(id) {
    if (id === "workspace") return "this workspace";
    return this.ctx.moduleName(id) || id;
  }

  /** The words for where a completed run's changes are. */
  review(run) {
    if (run.status !== "completed" || !run.overlay_id) return null;
    const done = this.outcome.get(run.run_id);
    if (done) return done;
    return this.overlays.has(run.overlay_id) ? "waiting" : "gone";
  }

  waiting() {
    return this.runs.filter((r) => this.review(r) === "waiting");
  }

  /** Events are hints: re-ask the engine what they name. Returns whether it was ours. */
  onEvent(ev) {
    const report = (what) => (e) => this.ctx.reportError(e, what);
    switch (ev.type) {
      case "script_queued":
      case "script_started":
      case "script_progress":
        if (ev.type === "script_progress") this.progress.set(ev.run_id, ev.op_count);
        this.refreshRuns().catch(report("Couldn't refresh the script runs"));
        this.forDialogs(ev.run_id);
        return true;
      case "script_completed":
      case "script_failed":
        this.refreshRuns().then(() => this.ended(ev))
          .catch(report("Couldn't refresh the script runs"));
        this.forDialogs(ev.run_id);
        return true;
      case "script_notify":
        toast(`${this.labelOf(ev.script)}: ${ev.message}`,
          { kind: ev.level === "error" ? "error" : ev.level === "warn" ? "warning" : "info" });
        return true;
      case "scripts_changed":
        this.refreshList().catch(report("Couldn't refresh the scripts"));
        return true;
      case "tables_changed": // a module adopted: its scripts may now run here
        this.refreshList().catch(report("Couldn't refresh the scripts"));
        return false;
      case "overlays_changed":
        this.refreshRuns().catch(() => {});
        this.forDialogs(null);
        return false;
      default:
        return false;
    }
  }

  forDialogs(runId) {
    for (const d of this.dialogs) {
      if (runId === null || d.runId === runId) d.refresh().catch(() => {});
    }
  }

  labelOf(scriptId) {
    const s = this.info(scriptId);
    return s ? s.label : scriptId;
  }

  /** J14: "Renumber cues staged 48 changes — Review", unless its dialog shows it already. */
  ended(ev) {
    const label = this.labelOf(ev.script);
    const shown = [...this.dialogs].some((d) => d.runId === ev.run_id);
    const run = this.runs.find((r) => r.run_id === ev.run_id);
    if (ev.type === "script_completed") {
      const n = ev.op_count || 0;
      const text = n ? `${label} staged ${plural(n, "change", "changes")}`
        : `${label} finished: nothing to change`;
      if (shown) announce(text);
      else {
        toast(n ? `${text} — review them before they apply.` : `${text}.`, n ? {
          timeout: 15000,
          action: { label: "Review", run: () => this.openRun(ev.run_id) },
        } : {});
      }
    } else {
      const text = `${label} didn't finish. ${failureText(run ? run.error : ev, this.info(ev.script))}`;
      if (shown) announce(text);
      else {
        toast(text, { kind: "error", timeout: 15000,
          action: { label: "Details", run: () => this.openRun(ev.run_id) } });
      }
    }
  }

  // --- the sidebar button -------------------------------------------------------------------

  renderBadge() {
    const n = this.waiting().length;
    const pill = $("scripts-count");
    pill.hidden = n === 0;
    pill.textContent = String(n);
    $("scripts-btn").setAttribute("aria-label", n
      ? `Scripts (${plural(n, "result", "results")} to review)` : "Scripts");
  }

  // --- the panel ----------------------------------------------------------------------------

  async openPanel() {
    if (!this.panel) {
      const list = el("ul", { class: "script-list", "aria-label": "Scripts" });
      const runs = el("ul", { class: "script-runs", "aria-label": "Recent runs" });
      const newBtn = el("button", { type: "button", class: "btn btn-secondary btn-sm",
        id: "new-script-btn" }, el("span", { html: icon("plus") }), "New script…");
      newBtn.addEventListener("click", () => this.edit(null));
      const m = modal({
        title: "Scripts", wide: true, cls: "scripts-dialog",
        body: [
          el("p", { class: "panel-intro muted",
            text: "Scripts come with modules and do repetitive work for you, such as " +
              "renumbering a cue list. A script's changes are staged: you review them, then " +
              "commit or discard them. On-change scripts run after changes you commit, " +
              "once you switch them on." }),
          el("div", { class: "fields-head" },
            el("h3", { class: "label", text: "Scripts" }), newBtn), list,
          el("h3", { class: "label", text: "Recent runs" }), runs],
        actions: [{ label: "Close" }],
      });
      this.panel = { modal: m, list, runs };
      m.done.then(() => { this.panel = null; });
      this.render();
    }
    await this.reload();
  }

  render() {
    if (!this.panel) return;
    const { list, runs, modal: m } = this.panel;
    const focusKey = document.activeElement && m.dlg.contains(document.activeElement)
      ? document.activeElement.dataset.key : null;
    list.replaceChildren();
    if (!this.scripts.length) {
      list.append(el("li", { class: "muted scripts-empty",
        text: "No scripts yet. Modules bring them: adopt Lighting Cues, Crew Calls or " +
          "Contacts in Modules, and their scripts appear here; or write one with New script." }));
    }
    for (const s of this.scripts) list.append(this.scriptItem(s));
    runs.replaceChildren();
    const recent = this.runs.slice(-SHOWN_RUNS).reverse();
    if (!recent.length) {
      runs.append(el("li", { class: "muted scripts-empty", text: "No runs yet." }));
    }
    for (const r of recent) runs.append(this.runItem(r));
    if (focusKey) {
      const again = m.dlg.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
      if (again && !again.disabled) again.focus();
    }
  }

  scriptItem(s) {
    const mod = this.moduleLabel(s.module);
    const manual = s.trigger === "manual";
    const title = el("div", { class: "peer-title" },
      el("span", { class: "script-label", text: s.label }),
      el("span", { class: "tag", text: manual ? "Run by hand" : "On change" }));
    const own = s.source_kind === "workspace";
    const main = el("div", { class: "peer-main" }, title,
      own ? el("p", { class: "peer-meta", text: "Workspace script · anyone in this workspace " +
        "can change it" })
        : el("p", { class: "peer-meta" }, document.createTextNode(`From ${mod} (read-only) · `),
          el("code", { text: s.id })));
    const args = Object.keys(s.args || {});
    if (manual) {
      main.append(el("p", { class: "peer-meta", text: args.length
        ? `Asks for: ${args.map(humanize).join(", ")}` : "Takes no input" }));
    } else {
      main.append(el("p", { class: "peer-meta", text: this.watchText(s) }));
    }
    for (const cap of s.capabilities || []) main.append(this.capabilityLine(s, cap));
    const error = this.errors.get(s.id);
    if (error) {
      main.append(el("p", { class: "rule-error", role: "alert" },
        el("span", { html: icon("error") }), document.createTextNode(error)));
    }
    const busy = this.busy.has(s.id);
    const actions = el("div", { class: "rule-actions" });
    if (manual) {
      const run = el("button", { type: "button", class: "btn btn-primary btn-sm", text: "Run…",
        "aria-label": `Run ${s.label}`, "data-key": `run:${s.id}`, disabled: busy });
      run.addEventListener("click", () => this.openRunForm(s));
      actions.append(run);
    } else {
      const on = s.trigger_enabled === true;
      const input = el("input", { type: "checkbox", role: "switch", "aria-label": s.label,
        "data-key": `switch:${s.id}`, checked: on, disabled: busy });
      input.addEventListener("change", () => this.setTrigger(s, input.checked, input)
        .catch(() => {}));
      actions.append(el("label", { class: "switch", title: on ? "Switch it off (for you)"
        : "Switch it on (for you, in this workspace)" }, input,
      el("span", { class: "switch-text", "aria-hidden": "true", text: on ? "On" : "Off" })));
    }
    if (own) {
      const edit = el("button", { type: "button", class: "btn btn-ghost btn-sm", text: "Edit…",
        "aria-label": `Edit ${s.label}`, "data-key": `edit:${s.id}` });
      edit.addEventListener("click", () => this.edit(s));
      const del = el("button", { type: "button", class: "btn btn-danger-ghost btn-sm",
        text: "Delete", "aria-label": `Delete ${s.label}`, "data-key": `delete:${s.id}` });
      del.addEventListener("click", () => this.remove(s));
      actions.append(edit, del);
    }
    return el("li", { class: "script-item", "data-script": s.id }, main, actions);
  }

  /** Write a new workspace script or change one (module scripts are read-only). */
  async edit(s) {
    const id = await editScript({ script: s, tables: this.ctx.tables ? this.ctx.tables() : [] });
    if (!id) return;
    announce(s ? "Script saved" : "Script created");
    await this.refreshList();
  }

  async remove(s) {
    const ok = await confirmDialog({ title: "Delete script",
      text: `Delete “${s.label}” for everyone in this workspace? What it changed stays.`,
      confirmLabel: "Delete", danger: true });
    if (!ok) return;
    try {
      await api.post("/scripts/delete", { id: s.id });
      toast(`Deleted “${s.label}”`);
      await this.refreshList();
    } catch (err) {
      this.ctx.reportError(err, "Couldn't delete the script");
    }
  }

  /** "Runs after you commit a change to Calls · Call time or Location, when Published is Yes." */
  watchText(s) {
    const w = s.watch || {};
    const t = this.ctx.tableById(w.table);
    const table = t ? t.label : w.table;
    const fieldLabel = (name) => {
      const f = t && t.fields.find((x) => x.name === name);
      return f ? f.label : name;
    };
    const events = w.events && w.events.length ? w.events
      : ["field_changed", "record_added", "record_removed"];
    const what = [];
    if (events.includes("field_changed")) {
      what.push((w.fields || []).length ? `${table} · ${w.fields.map(fieldLabel).join(" or ")}`
        : `any field of ${table}`);
    }
    if (events.includes("record_added")) what.push(`a record added to ${table}`);
    if (events.includes("record_removed")) what.push(`a record removed from ${table}`);
    let text = `Runs after you commit a change to ${what.join(", or ")}`;
    const c = s.when;
    if (c && c.field && c.op === "eq" && t) {
      const f = t.fields.find((x) => x.name === c.field);
      text += `, when ${fieldLabel(c.field)} is ${f ? F.displayText(f, c.value) : c.value}`;
    } else if (c) {
      text += ", for the records that match its condition";
    }
    return `${text}. ${s.trigger_enabled ? "On for you." : "Off until you switch it on."}`;
  }

  capabilityLine(s, cap) {
    const decided = (s.capability_decisions || {})[cap];
    const words = capabilityWords(cap, (id) => this.moduleLabel(id));
    const line = el("p", { class: "peer-meta script-capability" },
      el("span", { html: icon("warning") }),
      document.createTextNode(`Asks to ${words} — ${decided === "always" ? "always allowed"
        : decided === "never" ? "never allowed" : "asks you first"}`));
    if (decided) {
      const b = el("button", { type: "button", class: "link-btn", text: "Ask again",
        "aria-label": `Ask again before ${s.label} may ${words}`, "data-key": `cap:${s.id}:${cap}` });
      b.addEventListener("click", () => this.forget(s, cap).catch(() => {}));
      line.append(document.createTextNode(" "), b);
    }
    return line;
  }

  runItem(r) {
    const info = this.info(r.script);
    const label = r.label || this.labelOf(r.script);
    const meta = [];
    if (r.trigger === "on_change") meta.push("after a change");
    if (r.ended_at) meta.push(when(r.ended_at));
    const item = el("li", { class: `script-run run-${r.status}`, "data-run": r.run_id },
      el("div", { class: "peer-main" },
        el("div", { class: "peer-title" }, el("span", { text: label }),
          meta.length ? el("span", { class: "muted script-run-when", text: meta.join(" · ") }) : ""),
        el("p", { class: "peer-meta script-run-status", text: this.statusText(r, info) })));
    const actions = el("div", { class: "rule-actions" });
    const open = el("button", { type: "button", class: "btn btn-secondary btn-sm",
      text: this.review(r) === "waiting" ? "Review" : "Open",
      "aria-label": `${this.review(r) === "waiting" ? "Review" : "Open"} run: ${label}`,
      "data-key": `open:${r.run_id}` });
    open.addEventListener("click", () => this.openRun(r.run_id));
    actions.append(open);
    if (r.status === "queued" || r.status === "running") {
      const cancel = el("button", { type: "button", class: "btn btn-danger-ghost btn-sm",
        text: "Cancel", "aria-label": `Cancel run: ${label}`, "data-key": `cancel:${r.run_id}` });
      cancel.addEventListener("click", () => this.cancel(r.run_id).catch(() => {}));
      actions.append(cancel);
    }
    item.append(actions);
    return item;
  }

  /** A run's state in words. */
  statusText(r, info) {
    const n = r.op_count || 0;
    switch (r.status) {
      case "queued": return "Waiting for another script to finish…";
      case "running": {
        const p = this.progress.get(r.run_id);
        return p ? `Running… ${plural(p, "change", "changes")} staged so far` : "Running…";
      }
      case "failed": return failureText(r.error, info);
      default:
        switch (this.review(r)) {
          case "waiting": return `Done: ${plural(n, "change", "changes")} staged. Nothing ` +
            "applies until you commit.";
          case "committed": return `Committed: ${plural(n, "change", "changes")} applied.`;
          case "discarded": return "Discarded: nothing was applied.";
          case "gone": return `Done: its ${plural(n, "change was", "changes were")} committed ` +
            "or discarded.";
          default: return "Done: nothing to change.";
        }
    }
  }

  // --- commands -----------------------------------------------------------------------------

  async setTrigger(s, enabled, input) {
    this.busy.add(s.id);
    this.render();
    try {
      await api.post("/scripts/triggers", { script: s.id, enabled });
      this.errors.delete(s.id);
      announce(`${s.label}: ${enabled ? "on" : "off"}`);
    } catch (err) {
      if (err.code === "unauthorized") return;
      input.checked = !enabled;
      if (err.code === "capability_required") {
        this.busy.delete(s.id);
        const grants = await this.askCapabilities(s, err.details.capabilities || [],
          { once: false });
        if (grants) {
          for (const [cap, decision] of Object.entries(grants)) {
            await api.post("/scripts/capabilities", { script: s.id, capability: cap, decision });
          }
          if (Object.values(grants).every((g) => g === "always")) {
            await this.setTrigger(s, enabled, input);
            return;
          }
          this.errors.set(s.id, "It stays off: you refused what it asks for.");
        }
      } else {
        if (err.code === "cycle_detected" && this.ctx.reloadRules) await this.ctx.reloadRules();
        this.errors.set(s.id, this.triggerError(s, err));
        announce(this.errors.get(s.id));
      }
    } finally {
      this.busy.delete(s.id);
    }
    await this.refreshList();
  }

  triggerError(s, err) {
    if (err.code === "cycle_detected") {
      const names = String((err.details && err.details.path) || "").split(" -> ")
        .filter(Boolean);
      const me = `script:${s.id}`;
      const at = names.indexOf(me);
      if (at > 0) names.splice(0, names.length, ...names.slice(at, -1), ...names.slice(0, at), me);
      const text = names.map((n) => (n.startsWith("script:") ? this.labelOf(n.slice(7))
        : this.ctx.ruleLabel(n))).join(" → ");
      return "Turning this on would make it trigger itself through rules or other scripts: " +
        `${text}. Switch one of them off first.`;
    }
    if (err.code === "capability_denied") {
      return "It can't be switched on: you refused something it asks for (Never).";
    }
    return err.message || String(err);
  }

  async forget(s, cap) {
    try {
      await api.post("/scripts/capabilities", { script: s.id, capability: cap, decision: null });
      announce(`${s.label} will ask again`);
    } catch (err) {
      this.ctx.reportError(err, "Couldn't change the decision");
    }
    await this.refreshList();
  }

  async cancel(runId) {
    try {
      await api.post("/scripts/cancel", { run_id: runId });
      announce("Cancelling the script");
    } catch (err) {
      this.ctx.reportError(err, "Couldn't cancel the script");
    }
    await this.refreshRuns();
  }

  /** Allow once / Always / Never for each capability; resolves {cap: decision} or null. */
  askCapabilities(s, caps, { once = true } = {}) {
    const groups = caps.map((cap, i) => this.capabilityChoice(s, cap, i, once));
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const m = modal({
      title: `${s.label} asks for permission`,
      body: [el("p", { class: "confirm-text", text: once
        ? "Before it runs, decide what this script may do. “Allow once” asks again next time."
        : "Before it runs on its own, decide what this script may do." }),
      ...groups.map((g) => g.box), error],
      actions: [{ label: "Cancel" }, { label: "Continue", kind: "btn-primary", type: "submit" }],
    });
    m.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const out = {};
      for (const g of groups) {
        const picked = g.box.querySelector("input:checked");
        if (!picked) {
          error.textContent = `Choose ${once ? "Allow once, Always or Never" : "Always or Never"} ` +
            "for each.";
          error.hidden = false;
          return;
        }
        out[g.cap] = picked.value;
      }
      m.close(out);
    });
    const first = m.dlg.querySelector("input");
    if (first) first.focus();
    return m.done;
  }

  capabilityChoice(s, cap, i, once) {
    const words = capabilityWords(cap, (id) => this.moduleLabel(id));
    const name = `cap-${i}-${Math.random().toString(36).slice(2)}`;
    const opt = (value, label, help) => el("label", { class: "choice" },
      el("input", { type: "radio", name, value }),
      el("span", { class: "choice-label" }, el("span", { class: "choice-value", text: label }),
        el("span", { class: "choice-meta", text: ` — ${help}` })));
    const box = el("fieldset", { class: "choices script-permission" },
      el("legend", { text: `${humanize(words)}?` }),
      once ? opt("once", "Allow once", "for this run only") : "",
      opt("always", "Always", `remembered for this version of ${this.moduleLabel(s.module)}`),
      opt("never", "Never", "the script is refused; you can change this in Scripts"));
    box.setAttribute("aria-label", `${s.label} wants to ${words}`);
    return { cap, box };
  }

  // --- the run dialog -----------------------------------------------------------------------

  openRunForm(s, previous = null) {
    const d = new RunDialog(this, s, null, previous);
    d.open();
    return d;
  }

  async openRun(runId) {
    for (const d of this.dialogs) {
      if (d.runId === runId) {
        d.m.dlg.focus();
        return d;
      }
    }
    await this.refreshRuns().catch(() => {});
    const run = this.runs.find((r) => r.run_id === runId);
    const s = this.info(run ? run.script : null) ||
      { id: run ? run.script : "", label: run ? run.label : "Script", args: {}, trigger: "manual" };
    const d = new RunDialog(this, s, runId);
    d.open();
    return d;
  }

  /** {rows, summary, more} describing an overlay's changes: one row per record, and one for
   * the links (the change list names a link by its id only). */
  async describeChanges(changes) {
    const groups = new Map();
    const links = new Map(); // link id -> its ops
    for (const c of changes) {
      if (/Edge/.test(c.op || "")) {
        if (!links.has(c.entity_id)) links.set(c.entity_id, []);
        links.get(c.entity_id).push(c.op);
        continue;
      }
      if (!groups.has(c.entity_id)) groups.set(c.entity_id, { entity: c.entity_id, table: null,
        items: [] });
      const g = groups.get(c.entity_id);
      if (c.table && !g.table) g.table = c.table;
      g.items.push(c);
    }
    const count = { created: 0, changed: 0, deleted: 0 };
    const rows = [];
    let i = 0;
    for (const g of groups.values()) {
      const created = g.items.some((c) => c.op === "CreateEntity");
      const deleted = g.items.some((c) => c.op === "DeleteEntity");
      if (created) count.created += 1;
      else if (deleted) count.deleted += 1;
      else count.changed += 1;
      if (i++ >= SHOWN_RECORDS) continue;
      rows.push(await this.changeRow(g, created, deleted));
    }
    const parts = [];
    if (count.created) parts.push(plural(count.created, "new record", "new records"));
    if (count.changed) parts.push(plural(count.changed, "changed record", "changed records"));
    if (count.deleted) parts.push(plural(count.deleted, "deleted record", "deleted records"));
    if (links.size) {
      parts.push(plural(links.size, "link", "links"));
      const kinds = { created: 0, deleted: 0, moved: 0, props: 0 };
      for (const ops of links.values()) {
        if (ops.some((op) => op.startsWith("Create"))) kinds.created += 1;
        else if (ops.includes("DeleteEdge")) kinds.deleted += 1;
        else if (ops.includes("MoveOrderedEdge")) kinds.moved += 1;
        else kinds.props += 1;
      }
      const lines = [];
      if (kinds.created) lines.push(plural(kinds.created, "new link", "new links"));
      if (kinds.deleted) lines.push(plural(kinds.deleted, "link removed", "links removed"));
      if (kinds.moved) lines.push(plural(kinds.moved, "link moved in its list",
        "links moved in their lists"));
      if (kinds.props) lines.push(plural(kinds.props, "link changed", "links changed"));
      rows.push(el("tr", { class: "change-links-row" },
        el("td", { class: "change-record" }, el("span", { class: "change-name", text: "Links" })),
        el("td", {}, el("ul", { class: "change-lines" },
          ...lines.map((text) => el("li", { text }))))));
    }
    const more = groups.size > SHOWN_RECORDS ? groups.size - SHOWN_RECORDS : 0;
    return { rows, summary: parts.join(" · "), more };
  }

  async changeRow(g, created, deleted) {
    const t = this.ctx.tableById(g.table);
    let name;
    if (created) {
      // a record that exists only in this run: its first text value is its name
      const firstText = t && t.fields.find((f) => f.type === "text" && g.items.some((c) =>
        c.field_name === f.name && typeof c.new_value === "string" && c.new_value));
      const c = firstText && g.items.find((x) => x.field_name === firstText.name);
      name = c ? c.new_value : "New record";
    } else {
      name = await this.ctx.recordName(g.entity, g.table);
    }
    const lines = [];
    const several = new Set(g.items.filter((c) => c.field_name).map((c) => c.table)).size > 1;
    for (const c of g.items) {
      const table = this.ctx.tableById(c.table);
      if (c.field_name) {
        const f = table && table.fields.find((x) => x.name === c.field_name);
        const show = (v) => (v === null || v === undefined ? "empty"
          : `“${f ? F.displayText(f, v) : typeof v === "object" ? JSON.stringify(v) : v}”`);
        lines.push(el("li", {}, el("span", { class: "change-field",
          text: `${several && table ? `${table.label} · ` : ""}` +
            `${c.field_label || humanize(c.field_name)}: ` }),
        created ? el("span", { class: "new-value", text: show(c.new_value) })
          : el("span", { class: "change-values" },
            el("span", { class: "old-value", text: show(c.old_value) }),
            el("span", { class: "arrow", "aria-label": "becomes", text: " → " }),
            el("span", { class: "new-value", text: c.op === "ClearField" ? "empty"
              : show(c.new_value) }))));
      } else if (c.op === "AttachFacet" && !created) {
        lines.push(el("li", { text: `Added to ${table ? table.label : c.table}` }));
      } else if (c.op === "DetachFacet") {
        lines.push(el("li", { text: `Removed from ${table ? table.label : c.table}` }));
      } else if (c.op === "DeleteEntity") {
        lines.push(el("li", { text: "Record deleted" }));
      }
    }
    const what = created ? "New" : deleted ? "Deleted" : "";
    return el("tr", { "data-entity": g.entity },
      el("td", { class: "change-record" }, el("span", { class: "change-name", text: name }),
        what ? el("span", { class: `tag ${created ? "tag-ok" : "tag-warn"}`, text: what }) : "",
        t ? el("span", { class: "muted change-table-name", text: t.label }) : ""),
      el("td", {}, el("ul", { class: "change-lines" }, ...lines)));
  }
}

/** One run: the argument form before it starts, then its progress, log and result. */
class RunDialog {
  constructor(scripts, info, runId = null, previous = null) {
    this.s = scripts;
    this.info = info;
    this.runId = runId;
    this.previous = previous || {};
    this.grants = {};
    this.run = null;
    this.changes = null; // GET /overlays/<id>/changes of a completed run, or "gone"
    this.refresh = coalesced(() => this.load());
  }

  open() {
    const s = this.info;
    this.form = el("div", { class: "script-form" });
    this.formError = el("div", { class: "dialog-error", role: "alert", hidden: true });
    this.status = el("p", { class: "script-status", role: "status", "aria-live": "polite" });
    this.failure = el("div", { class: "dialog-error script-failure", role: "alert", hidden: true });
    this.logBox = el("section", { class: "script-output", "aria-label": "Output", hidden: true });
    this.changesBox = el("section", { class: "script-changes", "aria-label": "Changes",
      hidden: true });
    this.m = modal({
      title: s.label, wide: true, cls: "script-run-dialog",
      body: [el("p", { class: "muted panel-intro", text: this.introText() }),
        this.form, this.formError, this.status, this.failure, this.logBox, this.changesBox],
      actions: [],
    });
    this.m.foot.hidden = false;
    this.m.form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!this.runId) this.submit().catch(() => {});
    });
    this.m.dlg.tabIndex = -1;
    this.s.dialogs.add(this);
    this.m.done.then(() => this.s.dialogs.delete(this));
    if (this.runId) {
      this.form.hidden = true;
      this.renderFoot();
      this.refresh().catch((e) => this.s.ctx.reportError(e, "Couldn't load the run"));
    } else {
      this.renderForm();
    }
  }

  introText() {
    const mod = this.s.moduleLabel(this.info.module);
    if (this.info.trigger === "on_change") {
      return `An on-change script from ${mod}. Its changes are staged for you to review.`;
    }
    return `A script from ${mod}. It stages its changes: you review them, then commit or ` +
      "discard them. You can keep working while it runs.";
  }

  renderForm() {
    const args = Object.entries(this.info.args || {});
    this.inputs = [];
    const rows = args.map(([name, type], i) => {
      const id = `script-arg-${i}-${Math.random().toString(36).slice(2)}`;
      const input = argInput(type, id, this.previous[name]);
      const err = el("p", { class: "arg-error", role: "alert", hidden: true });
      this.inputs.push({ name, type, input, err });
      const label = el("label", { class: "label", for: id, text: humanize(name) });
      return el("div", { class: `script-arg arg-${type}`, "data-arg": name },
        type === "boolean" ? el("div", { class: "arg-check" }, input, label) : label,
        type === "boolean" ? "" : input, err);
    });
    this.form.replaceChildren(...(rows.length ? rows
      : [el("p", { class: "muted", text: "This script takes no input." })]));
    this.form.hidden = false;
    this.renderFoot();
    const first = this.inputs.length ? this.inputs[0].input
      : this.m.foot.querySelector(".btn-primary");
    if (first) first.focus();
  }

  showFormError(text) {
    this.formError.replaceChildren(el("span", { html: icon("error") }),
      document.createTextNode(text));
    this.formError.hidden = !text;
  }

  async submit() {
    const s = this.info;
    this.showFormError("");
    for (const x of this.inputs) x.err.hidden = true;
    const args = {};
    for (const x of this.inputs) {
      const v = argValue(x.type, x.input);
      if (v !== null) args[x.name] = v;
    }
    // every argument is required (04 §7.4): say which is missing before asking the engine
    const empty = this.inputs.find((x) => args[x.name] === undefined);
    if (empty) {
      empty.err.textContent = `Fill in ${humanize(empty.name)}.`;
      empty.err.hidden = false;
      empty.input.focus();
      return;
    }
    this.previous = args;
    const body = { script: s.id, args };
    if (Object.keys(this.grants).length) body.grants = this.grants;
    this.setBusy(true);
    try {
      const r = await api.post("/scripts/run", body);
      if (Object.values(this.grants).includes("always")) this.s.refreshList().catch(() => {});
      this.grants = {};
      this.runId = r.run_id;
      this.form.hidden = true;
      this.progressText();
      this.renderFoot();
      announce(`${s.label} started`);
      await Promise.all([this.refresh(), this.s.refreshRuns()]);
    } catch (err) {
      this.setBusy(false);
      if (err.code === "unauthorized") return;
      if (err.code === "capability_required") {
        const grants = await this.s.askCapabilities(s, err.details.capabilities || []);
        if (grants) {
          this.grants = grants;
          await this.submit();
        }
        return;
      }
      this.grants = {};
      if (err.code === "capability_denied") {
        this.showDenied(err.details.capability);
        this.s.refreshList().catch(() => {}); // a Never just given is remembered
      } else if (err.code === "invalid_args" && err.details.arg) {
        const x = this.inputs.find((y) => y.name === err.details.arg);
        const label = humanize(err.details.arg);
        const text = args[err.details.arg] === undefined ? `Fill in ${label}.`
          : `${label}: ${String(err.message).replace(/^[^:]*: /, "")}`;
        if (x) {
          x.err.textContent = text;
          x.err.hidden = false;
          x.input.focus();
        } else {
          this.showFormError(text);
        }
      } else {
        this.showFormError(err.message || String(err));
      }
    }
  }

  showDenied(cap) {
    const s = this.info;
    const words = capabilityWords(cap, (id) => this.s.moduleLabel(id));
    const again = el("button", { type: "button", class: "link-btn", text: "Ask me again" });
    again.addEventListener("click", async () => {
      try {
        await api.post("/scripts/capabilities", { script: s.id, capability: cap, decision: null });
        this.showFormError("");
        await this.s.refreshList();
        announce(`${s.label} will ask again`);
      } catch (err) {
        this.s.ctx.reportError(err, "Couldn't change the decision");
      }
    });
    this.formError.replaceChildren(el("span", { html: icon("error") }),
      el("span", { text: `Not run: ${s.label} needs to ${words}, and you chose Never for ` +
        "that. " }), again);
    this.formError.hidden = false;
  }

  setBusy(busy) {
    for (const b of this.m.foot.querySelectorAll("button")) b.disabled = busy;
  }

  progressText() {
    const run = this.run;
    if (!run || run.status === "queued") {
      this.status.textContent = run ? "Waiting for another script to finish…" : "Starting…";
      return;
    }
    this.status.textContent = this.s.statusText(run, this.info);
  }

  async load() {
    if (!this.runId) return;
    const r = await api.get("/scripts/runs", { run_id: this.runId });
    this.run = r.run;
    if (!this.info.limits && this.s.info(this.run.script)) this.info = this.s.info(this.run.script);
    this.changes = null;
    if (this.run.status === "completed" && this.run.overlay_id &&
      !this.s.outcome.has(this.run.run_id)) {
      try {
        this.changes = await api.get(`/overlays/${encodeURIComponent(this.run.overlay_id)}/changes`);
      } catch (e) {
        if (e.status !== 404) throw e;
        this.changes = "gone"; // committed or discarded elsewhere
        this.s.overlays.delete(this.run.overlay_id);
      }
    }
    await this.render();
  }

  async render() {
    const run = this.run;
    if (!run || !this.m.dlg.isConnected) return;
    this.m.dlg.dataset.status = run.status;
    this.progressText();
    if (run.status === "failed") {
      this.failure.replaceChildren(el("span", { html: icon("error") }),
        el("span", { class: "script-failure-text", text: failureText(run.error, this.info) }));
      this.failure.hidden = false;
      this.status.textContent = "It didn't finish.";
    } else {
      this.failure.hidden = true;
    }
    this.renderLog(run.log || []);
    await this.renderChanges();
    this.renderFoot();
  }

  renderLog(lines) {
    const items = lines.map((l) => {
      const level = l.level || "info";
      const li = el("li", { class: `log-${level}` });
      if (level === "warn" || level === "error") {
        li.append(el("span", { class: "log-level", html: icon(level === "warn" ? "warning" : "error") }),
          el("span", { class: "sr-only", text: level === "warn" ? "Warning: " : "Error: " }));
      }
      li.append(document.createTextNode(l.msg));
      return li;
    });
    this.logBox.replaceChildren(el("h3", { class: "label", text: "Output" }),
      items.length ? el("ol", { class: "script-log", "aria-label": "Output lines" }, ...items)
        : el("p", { class: "muted", text: "No output yet." }));
    this.logBox.hidden = !items.length && !(this.run && this.run.status !== "queued");
  }

  async renderChanges() {
    const box = this.changesBox;
    if (!this.changes || this.changes === "gone") {
      box.hidden = true;
      return;
    }
    const list = this.changes.changes || [];
    const drift = (this.changes.drift || []).length;
    const { rows, summary, more } = await this.s.describeChanges(list);
    if (!this.m.dlg.isConnected) return;
    const parts = [el("h3", { class: "label", text: "Changes" }),
      el("p", { class: "muted script-changes-summary",
        text: `${summary}. Nothing applies until you commit.` })];
    if (drift) {
      parts.push(el("p", { class: "resolver-note" }, el("span", { html: icon("drift") }),
        el("span", { text: `${plural(drift, "field was", "fields were")} changed by others ` +
          "since the script ran: open it in staging to decide them before committing." })));
    }
    parts.push(el("table", { class: "change-table script-change-table" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Record" }),
        el("th", { scope: "col", text: "Changes" }))),
      el("tbody", {}, ...rows)));
    if (more) parts.push(el("p", { class: "muted", text: `…and ${more} more records.` }));
    box.replaceChildren(...parts);
    box.hidden = false;
  }

  renderFoot() {
    const foot = this.m.foot;
    const had = foot.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    foot.replaceChildren();
    const btn = (key, label, cls, fn, extra = {}) => {
      const b = el("button", { type: extra.type || "button", class: `btn ${cls}`, text: label,
        "data-key": key, ...extra });
      if (fn) b.addEventListener("click", fn);
      foot.append(b);
      return b;
    };
    const close = () => this.m.close(null);
    const run = this.run;
    if (!this.runId) {
      btn("close", "Cancel", "btn-secondary", close);
      btn("run", "Run", "btn-primary", null, { type: "submit" });
    } else if (!run || run.status === "queued" || run.status === "running") {
      btn("close", "Close", "btn-secondary", close, { title: "The script keeps running" });
      btn("cancel", "Cancel run", "btn-danger-ghost", () => this.s.cancel(this.runId)
        .then(() => this.refresh()));
    } else {
      btn("close", "Close", "btn-secondary", close);
      const waiting = this.changes && this.changes !== "gone";
      if (waiting) {
        const drift = (this.changes.drift || []).length;
        btn("discard", "Discard", "btn-danger-ghost", () => this.discard());
        btn("stage", "Open in staging", "btn-secondary", () => this.openInStaging(), {
          title: "Make these changes your active staging session, to edit or drop some" });
        const c = btn("commit", "Commit", "btn-primary", () => this.commit());
        if (drift) {
          c.disabled = true;
          c.title = "Some fields changed since the script ran: open it in staging to decide";
        }
      } else if (this.info.trigger === "manual" && this.s.info(this.info.id)) {
        btn("again", "Run again…", "btn-secondary", () => {
          close();
          this.s.openRunForm(this.s.info(this.info.id), run.args);
        });
      }
    }
    if (had) {
      const again = foot.querySelector(`[data-key="${had}"]`);
      (again && !again.disabled ? again : foot.querySelector("button")).focus();
    }
  }

  async commit() {
    const run = this.run;
    this.setBusy(true);
    try {
      const r = await api.post("/overlays/commit", { id: run.overlay_id });
      this.s.outcome.set(run.run_id, "committed");
      toast(`${this.info.label}: ${plural(run.op_count, "change", "changes")} committed`);
      await Promise.all([this.s.ctx.afterWrite(r.seq), this.s.ctx.refreshOverlays()]);
    } catch (err) {
      if (err.code === "unresolved_drift") {
        toast("Commit waits: some fields were changed by others since the script ran. " +
          "Open it in staging to decide them.", { kind: "warning" });
      } else {
        this.s.ctx.reportError(err, "Couldn't commit");
      }
    }
    await Promise.all([this.refresh(), this.s.refreshRuns()]);
  }

  async discard() {
    const run = this.run;
    const ok = await confirmDialog({
      title: "Discard the script's changes?",
      text: `Discard the ${plural(run.op_count, "change", "changes")} ${this.info.label} ` +
        "staged? Nothing was applied yet; this cannot be undone.",
      confirmLabel: "Discard", danger: true,
    });
    if (!ok) return;
    this.setBusy(true);
    try {
      await api.post("/overlays/discard", { id: run.overlay_id });
      this.s.outcome.set(run.run_id, "discarded");
      announce("Discarded");
      await this.s.ctx.refreshOverlays();
    } catch (err) {
      this.s.ctx.reportError(err, "Couldn't discard");
    }
    await Promise.all([this.refresh(), this.s.refreshRuns()]);
  }

  async openInStaging() {
    const oid = this.run.overlay_id;
    await this.s.ctx.openInStaging(oid);
    this.m.close(null);
    if (this.s.panel) this.s.panel.modal.close(null);
  }
}
