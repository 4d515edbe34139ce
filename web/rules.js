// Rules in the UI (spec 05 J4; spec 04 §6): the Rules panel (every rule with its tables, its
// status in plain words, an on/off switch, "Apply to existing records", Delete for workspace
// rules), the proposals rules make ("Add Jane to People?" with Accept / Dismiss) and their
// count in the top bar. The engine evaluates rules, checks cycles and re-checks proposals; the
// UI shows what GET /rules/list and GET /rules/proposals answer and re-asks on events.

import * as api from "./api.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal, confirmDialog } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { coalesced } from "./conflicts.js";

const $ = (id) => document.getElementById(id);
const plural = (n, one, many) => (n === 1 ? `1 ${one}` : `${n} ${many}`);

/** A module rule's id is `module.rule`; a workspace rule's is 32 hex digits. */
export function moduleOf(ruleId) {
  const i = String(ruleId).indexOf(".");
  return i > 0 ? ruleId.slice(0, i) : null;
}

/** "Add Jane to People?" / "Remove Jane from People?" for one proposal. */
export function proposalQuestion(p) {
  const what = p.title || "this record";
  const table = p.target_label || p.target;
  return p.action === "detach" ? `Remove ${what} from ${table}?` : `Add ${what} to ${table}?`;
}

const STATUS = {
  active: { text: "Active", cls: "tag-ok" },
  disabled: { text: "Off", cls: "" },
  offered: { text: "Off", cls: "" },
  dormant: { text: "Waiting for tables", cls: "tag-accent" },
  suspended: { text: "Suspended", cls: "tag-warn" },
  invalid: { text: "Invalid", cls: "tag-warn" },
};

/**
 * @param {object} ctx
 *   reportError(err, what), afterWrite(seq): Promise (re-query the rows and the workspace),
 *   moduleName(id): string|null, overlayName(id): string|null, refreshOverlays(): Promise,
 *   offersChanged() (the offered rules changed: the modules panel may show them)
 */
export class Rules {
  constructor(ctx) {
    this.ctx = ctx;
    this.rules = [];
    this.tables = new Map(); // table id -> label
    this.proposals = [];
    this.errors = new Map(); // rule id -> message shown under it until its next success
    this.busy = new Set(); // rule and proposal ids with a request in flight
    this.panel = null;
    this.refresh = coalesced(() => this.loadRules());
    this.refreshProposals = coalesced(() => this.loadProposals());
    $("rules-btn").addEventListener("click", () => this.openPanel()
      .catch((e) => this.ctx.reportError(e, "Couldn't open the rules")));
    $("proposals-badge").addEventListener("click", () => this.openPanel({ proposals: true })
      .catch((e) => this.ctx.reportError(e, "Couldn't open the rules")));
  }

  async loadRules() {
    const r = await api.get("/rules/list");
    const t = await api.get("/tables/list", { after: r.seq });
    const offeredBefore = this.offeredKey();
    this.rules = r.rules || [];
    this.tables = new Map((t.tables || []).map((x) => [x.id, x.label]));
    for (const id of [...this.errors.keys()]) {
      if (!this.rules.some((x) => x.id === id)) this.errors.delete(id);
    }
    if (this.offeredKey() !== offeredBefore) this.ctx.offersChanged();
    this.render();
  }

  async loadProposals() {
    const r = await api.get("/rules/proposals");
    this.proposals = r.proposals || [];
    if (this.proposals.some((p) => p.context && p.context !== "canonical" &&
      !this.ctx.overlayName(p.context))) {
      await this.ctx.refreshOverlays().catch(() => {}); // a session made just now: its name
    }
    this.renderBadge();
    this.render();
  }

  /** Both lists (after a reload, a resync or a change of schema). */
  reload() {
    return Promise.all([this.refresh(), this.refreshProposals()]);
  }

  offeredKey() {
    return this.rules.filter((r) => r.status === "offered").map((r) => r.id).join(" ");
  }

  /** The rules an adopted module offers that nobody has switched on yet. */
  offeredBy(moduleId) {
    return this.rules.filter((r) => r.status === "offered" && moduleOf(r.id) === moduleId);
  }

  labelOf(ruleId) {
    const r = this.rules.find((x) => x.id === ruleId);
    return r ? r.label || r.id : ruleId;
  }

  tableLabel(id) {
    return this.tables.get(id) || id;
  }

  /** Events are hints: re-ask the engine what they name. Returns whether it was ours. */
  onEvent(ev) {
    const report = (what) => (e) => this.ctx.reportError(e, what);
    switch (ev.type) {
      case "rule_proposals_changed":
        this.refreshProposals().catch(report("Couldn't refresh the proposals"));
        return true;
      case "rules_changed":
      case "tables_changed":
        this.reload().catch(report("Couldn't refresh the rules"));
        return ev.type === "rules_changed";
      case "automation_suspended":
        this.reload().then(() => this.announceSuspended(ev))
          .catch(report("Couldn't refresh the rules"));
        return true;
      case "records_changed":
        // a change from elsewhere may answer a proposal (the engine lists only live ones)
        if (this.proposals.some((p) => p.source === ev.table || p.target === ev.table)) {
          this.refreshProposals().catch(() => {});
        }
        return false;
      default:
        return false;
    }
  }

  announceSuspended(ev) {
    const names = (ev.rules || []).map((id) => `“${this.labelOf(id)}”`);
    const who = names.length > 1
      ? `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}` : names[0] || "Rules";
    toast(names.length > 1
      ? `Automation paused: ${who} would trigger each other, so they are suspended. ` +
        "Turn one of them off in Rules."
      : `Automation paused: ${who} would trigger itself in a loop, so it is suspended. ` +
        "Turn it off or change it in Rules.", {
      kind: "warning", timeout: 15000,
      action: { label: "Open Rules", run: () => this.openPanel().catch(() => {}) },
    });
  }

  // --- top bar ------------------------------------------------------------------------------

  renderBadge() {
    const n = this.proposals.length;
    const b = $("proposals-badge");
    const was = Number(b.dataset.count || 0);
    b.hidden = n === 0;
    b.dataset.count = String(n);
    $("proposals-badge-text").textContent = plural(n, "proposal", "proposals");
    b.title = "Rules suggest changes: open Rules to accept or dismiss them";
    const pill = $("rules-count");
    pill.hidden = n === 0;
    pill.textContent = String(n);
    $("rules-btn").setAttribute("aria-label", n ? `Rules (${plural(n, "proposal", "proposals")})`
      : "Rules");
    if (n > was) announce(`${plural(n, "rule proposal", "rule proposals")} waiting`);
  }

  // --- the panel ----------------------------------------------------------------------------

  async openPanel({ proposals = false } = {}) {
    if (!this.panel) {
      const proposalList = el("ul", { class: "proposal-list", "aria-label": "Proposals" });
      const ruleList = el("ul", { class: "rule-list", "aria-label": "Rules" });
      const m = modal({
        title: "Rules", wide: true, cls: "rules-dialog",
        body: [
          el("p", { class: "panel-intro muted",
            text: "A rule adds records to another table when a condition holds, for example " +
              "active crew to People. Rules run only when switched on, and they ask before " +
              "changing anything: their proposals are listed here." }),
          el("h3", { class: "label", id: "proposals-heading", text: "Proposals" }), proposalList,
          el("h3", { class: "label", text: "Rules" }), ruleList],
        actions: [{ label: "Close" }],
      });
      this.panel = { modal: m, proposalList, ruleList };
      m.done.then(() => { this.panel = null; });
      this.render();
    }
    await this.reload();
    if (proposals && this.panel) {
      const first = this.panel.proposalList.querySelector("button");
      (first || this.panel.proposalList).scrollIntoView({ block: "nearest" });
      if (first) first.focus();
    }
  }

  render() {
    if (!this.panel) return;
    const { proposalList, ruleList, modal: m } = this.panel;
    const focusKey = document.activeElement && m.dlg.contains(document.activeElement)
      ? document.activeElement.dataset.key : null;
    this.renderProposals(proposalList);
    this.renderRules(ruleList);
    if (focusKey) {
      const again = m.dlg.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
      if (again && !again.disabled) again.focus();
      else if (!m.dlg.contains(document.activeElement)) {
        (m.dlg.querySelector(".proposal-item button, .rule-item input") ||
          m.foot.querySelector("button")).focus();
      }
    }
  }

  renderProposals(list) {
    list.replaceChildren();
    if (!this.proposals.length) {
      list.append(el("li", { class: "muted rules-empty",
        text: "Nothing waiting. Rules that are on suggest changes here." }));
      return;
    }
    for (const p of this.proposals) {
      const question = proposalQuestion(p);
      const meta = el("p", { class: "proposal-rule", text: p.rule_label || this.labelOf(p.rule_id) });
      const main = el("div", { class: "proposal-main" },
        el("p", { class: "proposal-question", text: question }), meta);
      if (p.context && p.context !== "canonical") {
        const name = this.ctx.overlayName(p.context);
        main.append(el("p", { class: "proposal-context" },
          el("span", { html: icon("layers") }),
          document.createTextNode(name
            ? `In the staging session “${name}”: accepting stages it there`
            : "In a staging session on this computer: accepting stages it there")));
      }
      const busy = this.busy.has(p.id);
      const accept = el("button", { type: "button", class: "btn btn-primary btn-sm",
        text: "Accept", "aria-label": `Accept: ${question}`, "data-key": `accept:${p.id}`,
        disabled: busy });
      const dismiss = el("button", { type: "button", class: "btn btn-secondary btn-sm",
        text: "Dismiss", "aria-label": `Dismiss: ${question}`, "data-key": `dismiss:${p.id}`,
        disabled: busy });
      accept.addEventListener("click", () => this.answer("accept", p).catch(() => {}));
      dismiss.addEventListener("click", () => this.answer("dismiss", p).catch(() => {}));
      list.append(el("li", { class: "proposal-item", "data-proposal": p.id }, main,
        el("div", { class: "proposal-actions" }, accept, dismiss)));
    }
  }

  renderRules(list) {
    list.replaceChildren();
    if (!this.rules.length) {
      list.append(el("li", { class: "muted rules-empty",
        text: "No rules yet. Modules can offer some (Crew Calls does): adopt one, then " +
          "switch its rules on here." }));
      return;
    }
    for (const r of this.rules) list.append(this.ruleItem(r));
  }

  ruleItem(r) {
    const label = r.label || r.id;
    const st = STATUS[r.status] || { text: r.status, cls: "" };
    const mid = moduleOf(r.id);
    const title = el("div", { class: "peer-title" }, el("span", { class: "rule-label", text: label }),
      el("span", { class: `tag ${st.cls} rule-status`, text: st.text }));
    const meta = el("p", { class: "peer-meta" },
      el("span", { class: "rule-tables" }, el("span", { text: this.tableLabel(r.source) }),
        el("span", { class: "arrow", "aria-label": "to", text: " → " }),
        el("span", { text: this.tableLabel(r.target) })));
    if (r.status === "offered" && mid) {
      meta.append(document.createTextNode(` · Offered by ${this.ctx.moduleName(mid) || mid}`));
    } else if (mid) {
      meta.append(document.createTextNode(` · From ${this.ctx.moduleName(mid) || mid}`));
    }
    const main = el("div", { class: "peer-main" }, title, meta);
    const reason = this.reasonText(r);
    if (reason) main.append(el("p", { class: "rule-reason", text: reason }));
    const error = this.errors.get(r.id);
    if (error) {
      main.append(el("p", { class: "rule-error", role: "alert" },
        el("span", { html: icon("error") }), document.createTextNode(error)));
    }

    const busy = this.busy.has(r.id);
    const on = r.enabled === true && r.status !== "offered";
    const input = el("input", { type: "checkbox", role: "switch", "aria-label": label,
      "data-key": `switch:${r.id}`, checked: on, disabled: busy });
    const sw = el("label", { class: "switch", title: on ? "Switch this rule off"
      : "Switch this rule on" }, input,
    el("span", { class: "switch-text", "aria-hidden": "true", text: on ? "On" : "Off" }));
    input.addEventListener("change", () => this.setEnabled(r, input.checked, input)
      .catch(() => {}));
    const actions = el("div", { class: "rule-actions" }, sw);
    if (r.status === "active") {
      const apply = el("button", { type: "button", class: "btn btn-secondary btn-sm",
        text: "Apply to existing records", "aria-label": `Apply to existing records: ${label}`,
        "data-key": `apply:${r.id}`, disabled: busy,
        title: `Add every record that matches now to ${this.tableLabel(r.target)}` });
      apply.addEventListener("click", () => this.apply(r).catch(() => {}));
      actions.append(apply);
    }
    if (!mid) {
      const del = el("button", { type: "button", class: "btn btn-danger-ghost btn-sm",
        "aria-label": `Delete rule: ${label}`, "data-key": `delete:${r.id}`, disabled: busy },
      el("span", { html: icon("trash") }), document.createTextNode("Delete"));
      del.addEventListener("click", () => this.remove(r).catch(() => {}));
      actions.append(del);
    }
    return el("li", { class: `rule-item rule-${r.status}`, "data-rule": r.id }, main, actions);
  }

  /** A dormant, suspended or invalid rule's reason, with rule ids shown by their labels. */
  reasonText(r) {
    if (!r.reason) return "";
    if (r.status === "suspended") {
      const m = /^in a cycle: (.*)$/.exec(r.reason);
      return m ? `Suspended: it would trigger other rules in a loop: ${this.pathText(m[1])}`
        : `Suspended: ${r.reason}`;
    }
    if (r.status === "dormant") {
      return `${r.reason[0].toUpperCase()}${r.reason.slice(1)}; it starts working once it does.`;
    }
    if (r.status === "invalid") return `This rule doesn't fit the tables: ${r.reason}`;
    return r.reason;
  }

  pathText(path) {
    return String(path || "").split(" -> ").filter(Boolean).map((id) => this.labelOf(id))
      .join(" → ");
  }

  errorText(err) {
    switch (err.code) {
      case "cycle_detected":
        return "Turning this on would make rules trigger each other: " +
          this.pathText(err.details && err.details.path);
      case "rule_limit_exceeded":
        return `Nothing was changed: the rules would set off too many changes (${err.message}).`;
      case "invalid_rule":
        return `This rule can't be saved: ${err.message}`;
      case "rule_not_found":
        return "This rule no longer exists.";
      default:
        return err.message || String(err);
    }
  }

  // --- commands -----------------------------------------------------------------------------

  async run(id, fn) {
    this.busy.add(id);
    this.render();
    try {
      return await fn();
    } finally {
      this.busy.delete(id);
      this.render();
    }
  }

  async setEnabled(r, enabled, input) {
    const label = r.label || r.id;
    try {
      await this.run(r.id, () => api.post("/rules/put", { id: r.id, enabled }));
      this.errors.delete(r.id);
      announce(enabled ? `${label}: on` : `${label}: off`);
    } catch (err) {
      if (err.code === "unauthorized") return;
      input.checked = !enabled;
      this.errors.set(r.id, this.errorText(err));
      this.render();
      announce(this.errors.get(r.id));
    }
    await this.reload();
  }

  async apply(r) {
    const label = r.label || r.id;
    const target = this.tableLabel(r.target);
    try {
      const res = await this.run(r.id, () => api.post("/rules/apply", { id: r.id }));
      this.errors.delete(r.id);
      if (!res.changed) {
        toast(`“${label}”: nothing to add — every matching record is in ${target} already.`);
      } else if (res.staged) {
        toast(`“${label}” applied: the matching records are staged for ${target}. ` +
          "Review and commit them from the staging banner.");
      } else {
        toast(`“${label}” applied: the matching records were added to ${target}.`);
      }
      await this.ctx.afterWrite(res.seq);
    } catch (err) {
      if (err.code === "unauthorized") return;
      this.errors.set(r.id, this.errorText(err));
      this.render();
      toast(`Couldn't apply “${label}”: ${this.errors.get(r.id)}`, { kind: "error",
        timeout: 10000 });
    }
    await this.reload();
  }

  async remove(r) {
    const label = r.label || r.id;
    const ok = await confirmDialog({ title: "Delete rule",
      text: `Delete the rule “${label}”? Its proposals go too. Records it added stay.`,
      confirmLabel: "Delete rule", danger: true });
    if (!ok) return;
    try {
      await this.run(r.id, () => api.post("/rules/delete", { id: r.id }));
      this.errors.delete(r.id);
      announce(`Rule ${label} deleted`);
    } catch (err) {
      if (err.code === "unauthorized") return;
      this.errors.set(r.id, this.errorText(err));
    }
    await this.reload();
  }

  async answer(kind, p) {
    const question = proposalQuestion(p);
    try {
      const res = await this.run(p.id, () => api.post(`/rules/proposals/${kind}`, { id: p.id }));
      if (kind === "accept") {
        announce(p.action === "detach" ? `Removed ${p.title} from ${p.target_label}`
          : `Added ${p.title} to ${p.target_label}`);
        if (res.staged) toast(`${question.replace(/\?$/, "")}: staged in your overlay.`);
        await this.ctx.afterWrite(res.seq);
      } else {
        announce("Proposal dismissed");
      }
    } catch (err) {
      if (err.code === "unauthorized") return;
      if (err.code === "proposal_stale" || err.code === "proposal_not_found") {
        toast(`“${question}” no longer applies; it was removed.`, { kind: "warning" });
      } else {
        this.ctx.reportError(err, kind === "accept" ? "Couldn't accept the proposal"
          : "Couldn't dismiss the proposal");
      }
    }
    await this.refreshProposals();
  }

  // --- the modules panel (J4): "1 rule offered — Open Rules" ------------------------------

  /** Add the offered-rules line to an adopted module's entry in the modules panel. */
  decorateModule(m, li) {
    if (!m.adopted) return;
    const offered = this.offeredBy(m.id);
    if (!offered.length) return;
    const n = offered.length;
    const b = el("button", { type: "button", class: "link-btn",
      text: `${plural(n, "rule", "rules")} offered by ${m.name || m.id} — Open Rules` });
    b.addEventListener("click", () => this.openPanel()
      .catch((e) => this.ctx.reportError(e, "Couldn't open the rules")));
    const host = li.querySelector(".peer-main") || li;
    host.append(el("p", { class: "peer-meta module-rules-offered" },
      el("span", { text: `Switched off until you turn ${n === 1 ? "it" : "them"} on: ` }), b));
  }
}
