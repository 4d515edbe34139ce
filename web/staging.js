// Staging in overlays (spec 05 J11, J12; spec 02 §2): "Start staging", the banner while an
// overlay is active, Review (the change list), the drift dialog, and the overlays menu. The
// engine routes edits into the active overlay and computes drift; the UI shows what
// GET /overlays/list and GET /overlays/<id>/changes return.

import * as api from "./api.js";
import * as F from "./format.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal, askText, confirmDialog } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { coalesced, when } from "./conflicts.js";

const $ = (id) => document.getElementById(id);
const plural = (n, one, many) => (n === 1 ? `1 ${one}` : `${n.toLocaleString()} ${many}`);
// the banner and Review read this many staged changes (an import of 10 000 rows stages 50 000)
const SHOWN_CHANGES = 500;

const OP_NAMES = {
  CreateEntity: "New record", DeleteEntity: "Delete record", RestoreEntity: "Restore record",
  AttachFacet: "Add to table", DetachFacet: "Remove from table", CreateEdge: "New link",
  DeleteEdge: "Remove link", MoveOrderedEdge: "Move", SetEdgeProperty: "Link property",
};

/**
 * @param {object} ctx
 *   tableById(id), recordName(entityId, tableId): Promise<string>,
 *   afterWrite(seq?): Promise (re-query rows and the workspace), reportError(err, what),
 *   flushEdit()
 */
export class Staging {
  constructor(ctx) {
    this.ctx = ctx;
    this.overlays = [];
    this.active = null; // the active overlay's list entry
    this.changes = [];
    this.drift = [];
    this.dialogs = new Set(); // open review / drift / overlays dialogs: re-rendered on refresh
    this.returnTo = null; // {id, name, for}: the session stashed to review overlay `for`
    this.refresh = coalesced(() => this.load());
    $("start-staging-btn").addEventListener("click", () => this.start());
    $("overlays-btn").addEventListener("click", () => this.openMenu());
    $("staging-review").addEventListener("click", () => this.openReview());
    $("staging-commit").addEventListener("click", () => this.active && this.commit(this.active));
    $("staging-discard").addEventListener("click", () => this.active && this.discard(this.active));
    $("staging-stash").addEventListener("click", () => this.active && this.stash(this.active));
  }

  get activeId() {
    return this.active ? this.active.id : null;
  }

  async load() {
    const r = await api.get("/overlays/list");
    this.overlays = r.overlays || [];
    this.active = this.overlays.find((o) => o.id === r.active) ||
      this.overlays.find((o) => o.status === "active") || null;
    let ch = null;
    if (this.active) {
      try {
        ch = await api.get(`/overlays/${encodeURIComponent(this.active.id)}/changes`,
          { limit: SHOWN_CHANGES });
      } catch (e) {
        // discarded or committed between the two requests: its overlays_changed event
        // reloads us, so this is not an error to show
        if (e.status !== 404) throw e;
        this.active = null;
      }
    }
    if (ch) {
      this.changes = ch.changes || [];
      this.total = ch.total ?? this.changes.length;
      this.drift = ch.drift || [];
    } else {
      this.changes = [];
      this.total = 0;
      this.drift = [];
    }
    this.renderBanner();
    this.offerReturn();
    for (const d of [...this.dialogs]) await d.render();
  }

  renderBanner() {
    const o = this.active;
    const banner = $("staging-banner");
    const stashed = this.overlays.filter((x) => x.status !== "active").length;
    const count = $("overlays-count");
    count.hidden = this.overlays.length === 0;
    count.textContent = String(this.overlays.length);
    // the pill is visual; the counts are the button's description, so that its name stays
    // its visible text "Overlays" (WCAG 2.5.3 label in name)
    count.setAttribute("aria-hidden", "true");
    const btn = $("overlays-btn");
    btn.removeAttribute("aria-label");
    if (this.overlays.length) {
      btn.title = `${plural(this.overlays.length, "overlay", "overlays")}` +
        (stashed ? `, ${stashed} stashed` : "");
    } else btn.removeAttribute("title");
    $("start-staging-btn").hidden = !!o;
    document.body.classList.toggle("is-staging", !!o);
    if (!o) {
      banner.hidden = true;
      return;
    }
    banner.hidden = false;
    const n = typeof o.changes === "number" ? o.changes : this.changes.length;
    $("staging-text").replaceChildren(el("strong", { text: "Staging: " }),
      el("span", { class: "staging-name", text: o.name }),
      document.createTextNode(` — ${plural(n, "change", "changes")}` +
        (o.new_records ? ` (${plural(o.new_records, "new record", "new records")})` : "")));
    const drifted = this.drift.length || o.drifted || 0;
    const commit = $("staging-commit");
    const reason = $("staging-drift");
    commit.disabled = drifted > 0 || n === 0;
    if (drifted) {
      reason.hidden = false;
      const btn = el("button", { type: "button", class: "link-btn", text: "Decide…" });
      btn.addEventListener("click", () => this.openDrift());
      reason.replaceChildren(el("span", { html: icon("drift") }),
        el("span", { text: `Commit waits: ${plural(drifted, "field was", "fields were")} ` +
          "changed by others while you were staging. " }), btn);
      commit.title = "Decide every field changed while you were staging first";
    } else if (n === 0) {
      reason.hidden = true;
      commit.title = "Nothing staged yet: edits you make now are collected here";
    } else {
      reason.hidden = true;
      commit.title = "Apply every staged change as one step";
    }
  }

  // --- actions ------------------------------------------------------------------------------

  async run(what, fn) {
    this.ctx.flushEdit();
    try {
      const r = await fn();
      await Promise.all([this.refresh(), this.ctx.afterWrite(r && r.seq)]);
      return r;
    } catch (err) {
      if (err.code === "unresolved_drift") {
        await this.refresh();
        toast("Commit waits: some fields were changed by others while you were staging.",
          { kind: "warning" });
        this.openDrift();
        return null;
      }
      this.ctx.reportError(err, what);
      await this.refresh().catch(() => {});
      return null;
    }
  }

  async start() {
    const name = await askText({
      title: "Start staging", label: "Name", placeholder: "e.g. Act 2 rework",
      submitLabel: "Start staging",
      help: "Your edits are collected here instead of being applied. Review them, then " +
        "commit them as one step, or discard them. Teammates see nothing until you commit.",
    });
    if (!name) return;
    const r = await this.run("Couldn't start staging",
      () => api.post("/overlays/create", { name }));
    if (r) announce(`Staging ${name}: your edits are now staged`);
  }

  async stash(o) {
    const r = await this.run("Couldn't stash", () => api.post("/overlays/stash", { id: o.id }));
    if (r) toast(`“${o.name}” stashed. Open Overlays to pick it up again.`);
  }

  async discard(o) {
    const n = typeof o.changes === "number" ? o.changes : 0;
    const ok = await confirmDialog({
      title: "Discard staged changes?",
      text: `Discard “${o.name}” and its ${plural(n, "staged change", "staged changes")}? ` +
        "This cannot be undone.",
      confirmLabel: "Discard", danger: true,
    });
    if (!ok) return;
    const r = await this.run("Couldn't discard", () => api.post("/overlays/discard", { id: o.id }));
    if (r) toast(`“${o.name}” discarded`);
  }

  async commit(o) {
    const r = await this.run("Couldn't commit", () => api.post("/overlays/commit", { id: o.id }));
    if (r) {
      toast(r.bundle_id ? `“${o.name}” committed` : `“${o.name}” had nothing to commit`);
      for (const d of [...this.dialogs]) if (d.overlayId === o.id) d.m.close(null);
    }
  }

  async activate(o) {
    let stash = false;
    if (this.active && this.active.id !== o.id) {
      const ok = await confirmDialog({
        title: "Switch overlays?",
        text: `“${this.active.name}” is active. Stash it and activate “${o.name}”?`,
        confirmLabel: "Stash and activate",
      });
      if (!ok) return;
      stash = true;
    }
    const previous = this.active;
    const r = await this.run("Couldn't activate",
      () => api.post("/overlays/activate", { id: o.id, stash_current: stash }));
    if (r) {
      announce(`Staging ${o.name}`);
      // J14: once this one is committed or discarded, offer the stashed session back
      if (stash && previous) this.returnTo = { id: previous.id, name: previous.name, for: o.id };
    }
  }

  /** The overlay reviewed instead of the user's own session is gone (committed or
   * discarded): offer "Return to your staging session" (spec 05 J14). */
  offerReturn() {
    const back = this.returnTo;
    if (!back || this.overlays.some((x) => x.id === back.for)) return;
    this.returnTo = null;
    const mine = this.overlays.find((x) => x.id === back.id);
    if (!mine || this.active) return;
    toast(`Return to your staging session “${mine.name}”?`, {
      timeout: 20000,
      action: { label: "Return to your staging session",
        run: () => this.activate(mine) },
    });
  }

  // --- describing changes -------------------------------------------------------------------

  fieldOf(tableId, name) {
    const t = this.ctx.tableById(tableId);
    return t ? t.fields.find((f) => f.name === name) || null : null;
  }

  show(tableId, fieldName, v) {
    if (v === null || v === undefined) return "empty";
    const f = this.fieldOf(tableId, fieldName);
    return `“${f ? F.displayText(f, v) : typeof v === "object" ? JSON.stringify(v) : v}”`;
  }

  // --- Review ---------------------------------------------------------------------------------

  openReview() {
    if (!this.active) return;
    const o = this.active;
    const list = el("div", { class: "change-list" });
    const summary = el("p", { class: "muted panel-intro" });
    const m = modal({
      title: `Review: ${o.name}`, wide: true, cls: "dialog-panel",
      body: [summary, list],
      actions: [{ label: "Done" }],
    });
    const d = {
      m, overlayId: o.id,
      render: async () => {
        if (!this.active || this.active.id !== o.id) {
          m.close(null);
          return;
        }
        const rows = await Promise.all(this.changes.map((c) => this.changeRow(c)));
        const more = this.total > this.changes.length
          ? ` (the first ${this.changes.length.toLocaleString()} are listed)` : "";
        summary.textContent = `${plural(this.total, "staged change", "staged changes")}${more}` +
          ". Nothing is applied until you commit; dropping a change forgets it.";
        const table = el("table", { class: "change-table" },
          el("thead", {}, el("tr", {},
            el("th", { scope: "col", text: "Record" }), el("th", { scope: "col", text: "Field" }),
            el("th", { scope: "col", text: "Change" }),
            el("th", { scope: "col" }, el("span", { class: "sr-only", text: "Actions" })))),
          el("tbody", {}, ...rows));
        list.replaceChildren(rows.length ? table
          : el("p", { class: "conflict-empty", text: "No staged changes yet." }));
      },
    };
    this.track(d);
  }

  async changeRow(c) {
    const name = await this.ctx.recordName(c.entity_id, c.table);
    const drop = el("button", { type: "button", class: "btn btn-ghost btn-sm",
      text: "Drop this change" });
    const fieldText = c.field_label || c.field_name || (OP_NAMES[c.op] || c.op || "");
    drop.setAttribute("aria-label", `Drop this change: ${name} · ${fieldText}`);
    drop.addEventListener("click", () => this.run("Couldn't drop the change",
      () => api.post("/overlays/drop-change", {
        overlay_id: this.activeId, local_op_id: c.local_op_id,
      })).then((r) => { if (r) announce("Change dropped"); }));
    let change;
    if (c.field_name) {
      change = el("span", { class: "change-values" },
        el("span", { class: "old-value", text: this.show(c.table, c.field_name, c.old_value) }),
        el("span", { class: "arrow", "aria-label": "becomes", text: " → " }),
        el("span", { class: "new-value", text: this.show(c.table, c.field_name, c.new_value) }));
    } else {
      change = el("span", { text: OP_NAMES[c.op] || c.op || "Change" });
    }
    const cells = [el("td", { text: name }), el("td", { text: c.field_label || "—" }),
      el("td", {}, change, c.drifted ? el("span", { class: "tag tag-warn" },
        el("span", { html: icon("drift") }), el("span", { text: " Changed by others" })) : ""),
      el("td", { class: "actions" }, drop)];
    return el("tr", { "data-op": c.local_op_id }, ...cells);
  }

  // --- Drift ----------------------------------------------------------------------------------

  openDrift() {
    if (!this.active) return;
    for (const d of this.dialogs) if (d.kind === "drift") return;
    const o = this.active;
    const list = el("ul", { class: "drift-list", "aria-label": "Fields changed while staging" });
    const bulk = el("div", { class: "drift-bulk" });
    const m = modal({
      title: "Changed while you were staging", wide: true, cls: "dialog-panel",
      body: [el("p", { class: "muted panel-intro", text: "Someone changed these fields after " +
        "you staged your own value. For each one: Keep Mine (your commit overwrites theirs) or " +
        "Use Canonical (drop your staged edit). Commit waits until every field is decided." }),
      list, bulk],
      actions: [{ label: "Done" }],
    });
    const d = {
      m, kind: "drift", overlayId: o.id,
      render: async () => {
        if (!this.active || this.active.id !== o.id) {
          m.close(null);
          return;
        }
        const items = await Promise.all(this.drift.map((x) => this.driftItem(x)));
        list.replaceChildren(...(items.length ? items : [el("li", { class: "conflict-empty" },
          el("span", { html: icon("check") }),
          el("span", { text: "Every field is decided. You can commit." }))]));
        bulk.replaceChildren();
        if (this.drift.length > 1) {
          const all = (choice, label) => {
            const b = el("button", { type: "button", class: "btn btn-secondary btn-sm",
              text: label });
            b.addEventListener("click", async () => {
              const ok = await confirmDialog({
                title: label, confirmLabel: label,
                text: `${label} for all ${this.drift.length} fields?`,
              });
              if (!ok) return;
              for (const x of [...this.drift]) await this.resolveDrift(x, choice);
            });
            return b;
          };
          bulk.append(all("keep_mine", "Keep mine for all"),
            all("use_canonical", "Use canonical for all"));
        }
      },
    };
    this.track(d);
  }

  async driftItem(x) {
    const change = this.changes.find((c) => c.entity_id === x.entity_id &&
      (c.field_name === x.field || c.field === x.field));
    const table = change ? change.table : null;
    const name = await this.ctx.recordName(x.entity_id, table);
    const fieldName = change ? change.field_name : x.field;
    const label = x.field_label || (change && change.field_label) ||
      (x.field === "$entity" ? "Record" : x.field);
    let text;
    if (x.kind === "deleted") text = "This record was deleted while you were staging.";
    else if (x.kind === "edited") text = "This record was edited while you were staging " +
      "its deletion.";
    else if (x.kind === "conflict") text = "This field now has a conflict.";
    else {
      const by = x.by_name || x.actor_name;
      const at = x.at_ms ? ` at ${when(x.at_ms)}` : "";
      text = `Changed to ${this.show(table, fieldName, x.canonical_value)}` +
        `${by ? ` by ${by}` : ""}${at} while you were staging.`;
    }
    const keep = el("button", { type: "button", class: "btn btn-primary btn-sm",
      text: "Keep Mine", "aria-label": `Keep mine: ${name} · ${label}` });
    const canon = el("button", { type: "button", class: "btn btn-secondary btn-sm",
      text: "Use Canonical", "aria-label": `Use canonical: ${name} · ${label}` });
    keep.addEventListener("click", () => this.resolveDrift(x, "keep_mine"));
    canon.addEventListener("click", () => this.resolveDrift(x, "use_canonical"));
    return el("li", { class: "drift-item" },
      el("span", { class: "conflict-icon drift-icon", html: icon("drift") }),
      el("div", { class: "conflict-main" },
        el("div", { class: "conflict-title", text: `${name} · ${label}` }),
        el("div", { class: "conflict-tips", text }),
        x.kind === "value" || !x.kind ? el("div", { class: "conflict-tips" },
          el("span", { text: "Yours: " }),
          el("strong", { text: this.show(table, fieldName, x.overlay_value) })) : ""),
      el("div", { class: "drift-actions" }, keep, canon));
  }

  async resolveDrift(x, choice) {
    const o = this.active;
    if (!o) return;
    const r = await this.run("Couldn't decide the field", () => api.post("/overlays/resolve-drift", {
      overlay_id: o.id, entity_id: x.entity_id, field: x.field, choice,
    }));
    if (r) announce(choice === "keep_mine" ? "Kept yours" : "Using the canonical value");
  }

  /** The drift dialog, from a cell's "Changed" badge. */
  openDriftFor() {
    this.openDrift();
  }

  // --- the overlays menu ----------------------------------------------------------------------

  openMenu() {
    const list = el("ul", { class: "overlay-list", "aria-label": "Overlays" });
    const m = modal({
      title: "Overlays", wide: true, cls: "dialog-panel",
      body: [el("p", { class: "muted panel-intro", text: "Staged changes kept on this machine. " +
        "At most one is active: your edits go into it. Stashed ones wait until you activate " +
        "them again." }), list],
      actions: [{ label: "Start staging…", run: (close) => { close(null); this.start(); } },
        { label: "Done" }],
    });
    const d = {
      m,
      render: async () => {
        const items = this.overlays.map((o) => {
          const isActive = o.status === "active";
          const btns = [];
          const mk = (label, cls, fn) => {
            const b = el("button", { type: "button", class: `btn ${cls} btn-sm`, text: label,
              "aria-label": `${label} ${o.name}` });
            b.addEventListener("click", fn);
            btns.push(b);
            return b;
          };
          if (isActive) mk("Stash", "btn-secondary", () => this.stash(o));
          else mk("Activate", "btn-secondary", () => this.activate(o));
          const c = mk("Commit", "btn-primary", () => this.commit(o));
          if (o.drifted) {
            c.disabled = true;
            c.title = "Some fields changed while this was staged: activate it to decide them";
          }
          mk("Discard", "btn-danger-ghost", () => this.discard(o));
          const meta = [plural(o.changes || 0, "change", "changes")];
          if (o.drifted) meta.push(`${plural(o.drifted, "field", "fields")} changed by others`);
          const src = Array.isArray(o.source) ? o.source : [o.source];
          if (src[0] === "script") meta.push(`from the script ${src[1] || ""}`.trim());
          else if (src[0] === "import") meta.push(`import of ${src[1] || "a file"}`);
          if (o.created_at) meta.push(`started ${when(o.created_at)}`);
          return el("li", { class: `overlay-item${isActive ? " is-active" : ""}` },
            el("span", { class: "conflict-icon overlay-icon", html: icon("layers") }),
            el("div", { class: "conflict-main" },
              el("div", { class: "conflict-title", text: o.name },
                el("span", { class: `tag ${isActive ? "tag-accent" : ""}`,
                  text: isActive ? "Active" : "Stashed" }),
                o.drifted ? el("span", { class: "tag tag-warn" }, el("span", { html: icon("drift") }),
                  el("span", { text: " Drift" })) : ""),
              el("div", { class: "conflict-tips", text: meta.join(" · ") })),
            el("div", { class: "drift-actions" }, ...btns));
        });
        list.replaceChildren(...(items.length ? items : [el("li", { class: "conflict-empty",
          text: "No overlays. Start staging to collect changes before applying them." })]));
      },
    };
    this.track(d);
    this.refresh().catch(() => {});
  }

  track(d) {
    this.dialogs.add(d);
    d.m.done.then(() => this.dialogs.delete(d));
    d.render().catch((e) => this.ctx.reportError(e, "Couldn't show the overlay"));
  }
}
