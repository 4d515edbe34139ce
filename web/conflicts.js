// Conflicts (spec 05 J10, spec 02 §1): the top-bar badge, the conflicts panel and the resolver.
// The engine decides everything (tips, display value, reopening); the UI lists what
// GET /conflicts/list returns and sends the user's pick to POST /conflicts/resolve.

import * as api from "./api.js";
import * as F from "./format.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal } from "./dialogs.js";
import { toast, announce } from "./toast.js";

const $ = (id) => document.getElementById(id);

const whenFmt = new Intl.DateTimeFormat(undefined, {
  weekday: "short", hour: "2-digit", minute: "2-digit",
});
const longWhenFmt = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});

/** "Sat 18:02" within the last week, "Nov 3, 18:02" before. */
export function when(ms) {
  if (typeof ms !== "number") return "";
  const d = new Date(ms);
  return (Date.now() - ms < 6 * 86400000 ? whenFmt : longWhenFmt).format(d);
}

/**
 * @param {object} ctx
 *   tableById(id), recordName(entityId, tableId): Promise<string>,
 *   afterWrite(seq): Promise (refresh what is on screen), reportError(err, what)
 */
export class Conflicts {
  constructor(ctx) {
    this.ctx = ctx;
    this.list = [];
    this.count = 0;
    this.panel = null;
    this.resolver = null;
    this.refresh = coalesced(() => this.load());
    $("conflict-badge").addEventListener("click", () => this.openPanel());
  }

  async load() {
    const r = await api.get("/conflicts/list", { status: "open" });
    this.list = r.conflicts || [];
    this.setCount(typeof r.count_open === "number" ? r.count_open : this.list.length);
    if (this.panel) await this.renderPanel();
    if (this.resolver) await this.resolver.sync();
  }

  setCount(n) {
    if (n === this.count && $("conflict-badge").dataset.ready) return;
    const was = this.count;
    this.count = n;
    const b = $("conflict-badge");
    b.dataset.ready = "1";
    b.dataset.count = String(n);
    $("conflict-badge-text").textContent = n === 0 ? "No conflicts"
      : n === 1 ? "1 conflict" : `${n} conflicts`;
    b.title = n === 0 ? "No open conflicts" : "Concurrent edits disagree: open the list to decide";
    if (n > was && was >= 0 && b.dataset.announced) announce(`${n} open conflicts`);
    b.dataset.announced = "1";
  }

  field(c) {
    const t = this.ctx.tableById(c.table);
    return t ? t.fields.find((f) => f.name === c.field_name) || null : null;
  }

  valueText(c, v) {
    if (v === null || v === undefined) return "empty";
    const f = this.field(c);
    return `“${f ? F.displayText(f, v) : String(v)}”`;
  }

  /** "Alex “10:30” (Sat 18:02), Jordan “10:45” (Sun 09:15)" */
  tipsText(c) {
    if (c.kind === "delete") {
      return c.tips.map((t) => (t.op === "DeleteEntity" || (t.value === null && t.deleted))
        ? `${t.actor_name} deleted it (${when(t.at_ms)})`
        : `${t.actor_name} edited it (${when(t.at_ms)})`).join(", ");
    }
    return c.tips.map((t) => `${t.actor_name} ${this.valueText(c, t.value)} (${when(t.at_ms)})`)
      .join(", ");
  }

  async title(c) {
    const t = this.ctx.tableById(c.table);
    // a deleted record cannot be read (404): name it by its id until it is restored
    const name = c.kind === "delete" ? this.ctx.knownName(c.entity_id) ||
      `Deleted record …${F.shortId(c.entity_id)}` : await this.ctx.recordName(c.entity_id, c.table);
    const parts = [t ? t.label : "Record", name];
    if (c.kind === "field") parts.push(c.field_label || c.field_name || c.field);
    return parts.join(" · ");
  }

  // --- the panel ---------------------------------------------------------------------------

  async openPanel() {
    if (this.panel) return;
    const list = el("ul", { class: "conflict-list", "aria-label": "Open conflicts" });
    const m = modal({
      title: "Conflicts",
      wide: true,
      cls: "dialog-panel",
      body: [el("p", { class: "muted panel-intro", text: "Concurrent edits that disagree. " +
        "Each cell shows a provisional value until someone picks one; nothing else is blocked." }),
      list],
    });
    this.panel = { m, list };
    m.done.then(() => { this.panel = null; });
    await this.renderPanel();
    this.refresh().catch(() => {});
  }

  async renderPanel() {
    const p = this.panel;
    if (!p) return;
    const items = await Promise.all(this.list.map(async (c) => {
      const resolve = el("button", { type: "button", class: "btn btn-secondary btn-sm",
        text: "Resolve…" });
      const title = await this.title(c);
      resolve.setAttribute("aria-label", `Resolve ${title}`);
      resolve.addEventListener("click", () => this.openResolver(c.conflict_id));
      const kind = c.kind === "delete" ? "Deleted and edited" : "Different values";
      return el("li", { class: "conflict-item", "data-conflict": c.conflict_id },
        el("span", { class: "conflict-icon", html: icon("warning") }),
        el("div", { class: "conflict-main" },
          el("div", { class: "conflict-title", text: title },
            c.reopened ? el("span", { class: "tag tag-warn", text: "Reopened" }) : ""),
          el("div", { class: "conflict-tips", text: `${kind} — ${this.tipsText(c)}` })),
        resolve);
    }));
    if (this.panel !== p) return;
    if (!items.length) {
      p.list.replaceChildren(el("li", { class: "conflict-empty" },
        el("span", { html: icon("check") }), el("span", { text: "No open conflicts." })));
    } else {
      p.list.replaceChildren(...items);
    }
  }

  // --- the resolver ------------------------------------------------------------------------

  /** Open the resolver for a cell (record id + field) or a conflict id. */
  async openForCell(entityId, field) {
    await this.refresh();
    const c = this.list.find((x) => x.entity_id === entityId && x.kind === "field" &&
      (x.field_name === field.name || x.field === field.name));
    if (!c) {
      toast("This conflict is already resolved.");
      return;
    }
    await this.openResolver(c.conflict_id);
  }

  async openResolver(conflictId) {
    if (this.resolver) this.resolver.m.close(null);
    const c = this.list.find((x) => x.conflict_id === conflictId);
    if (!c) return;
    const r = new Resolver(this, c);
    this.resolver = r;
    r.m.done.then(() => { if (this.resolver === r) this.resolver = null; });
    await r.render();
  }
}

class Resolver {
  constructor(owner, c) {
    this.owner = owner;
    this.c = c;
    this.note = el("div", { class: "resolver-note", role: "status" });
    this.error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    this.content = el("div", { class: "resolver" });
    this.m = modal({
      title: c.kind === "delete" ? "Resolve: deleted and edited" : "Resolve conflict",
      cls: "dialog-resolver",
      body: [this.content, this.note, this.error],
      actions: [{ label: "Cancel" },
        { label: "Resolve", kind: "btn-primary", type: "submit" }],
    });
    this.submit = this.m.foot.lastChild;
    this.m.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
  }

  /** The list changed: follow this conflict (closed elsewhere, or new tips). */
  async sync() {
    const now = this.owner.list.find((x) => x.conflict_id === this.c.conflict_id);
    if (!now) {
      this.m.close(null);
      toast("That conflict was resolved.");
      return;
    }
    const tips = (x) => x.tips.map((t) => t.op_id).sort().join();
    if (tips(now) !== tips(this.c)) {
      this.c = now;
      await this.render();
      this.showNote("The values changed while this was open (a new edit arrived). " +
        "The choices below are up to date.");
    }
  }

  showNote(text) {
    this.note.replaceChildren(el("span", { html: icon("warning") }), el("span", { text }));
    this.note.hidden = false;
  }

  async render() {
    const c = this.c;
    const owner = this.owner;
    this.note.hidden = true;
    this.error.hidden = true;
    const f = owner.field(c);
    const title = await owner.title(c);
    const group = el("fieldset", { class: "choices" },
      el("legend", { text: c.kind === "delete" ? "What should happen to this record?"
        : "Keep which value?" }));
    const radio = (value, labelNodes, extra = null) => {
      const id = `rv-${Math.random().toString(36).slice(2, 9)}`;
      const input = el("input", { type: "radio", name: "choice", id, value });
      const row = el("div", { class: "choice" }, input,
        el("label", { for: id, class: "choice-label" }, ...labelNodes));
      if (extra) row.append(extra);
      group.append(row);
      return input;
    };
    this.choices = [];
    this.newInput = null;
    if (c.kind === "delete") {
      const who = c.tips.map((t) => owner.tipsText({ ...c, tips: [t] })).join("; ");
      this.content.replaceChildren(el("p", { class: "resolver-what", text: title }),
        el("p", { class: "muted", text: who }), group);
      this.choices.push({ input: radio("restore", [el("strong", { text: "Restore" }),
        el("span", { class: "muted", text: " — bring the record back with its edits" })]),
      body: { choice: "restore" } });
      this.choices.push({ input: radio("keep_deleted", [el("strong", { text: "Keep deleted" }),
        el("span", { class: "muted", text: " — the edits stay in its history" })]),
      body: { choice: "keep_deleted" } });
      this.submit.textContent = "Resolve";
    } else {
      this.content.replaceChildren(el("p", { class: "resolver-what", text: title }), group);
      if (c.reopened) {
        const res = (c.resolutions || []).at(-1);
        const late = c.tips.filter((t) => !t.is_resolution).map((t) => t.actor_name);
        this.content.insertBefore(el("p", { class: "reopened-note" },
          el("span", { html: icon("warning") }),
          el("span", { text: `Reopened — late edit from ${late.join(" and ") || "a teammate"}.` +
            (res ? ` It had been resolved to ${owner.valueText(c, res.value)}.` : "") })), group);
      }
      c.tips.forEach((t, i) => {
        const input = radio(`tip-${i}`, [
          el("span", { class: "choice-value", text: owner.valueText(c, t.value) }),
          el("span", { class: "choice-meta", text: ` ${t.actor_name} · ${when(t.at_ms)}` +
            (t.is_resolution ? " · resolved value" : "") +
            (t.value === c.display_value ? " · shown now" : "") })]);
        if (t.value === c.display_value) input.checked = true;
        this.choices.push({ input, body: { value: t.value } });
      });
      const editor = valueEditor(f);
      const other = radio("new", [el("span", { text: "Another value" })], editor.root);
      editor.root.addEventListener("focusin", () => { other.checked = true; });
      editor.root.addEventListener("input", () => { other.checked = true; });
      editor.root.addEventListener("change", () => { other.checked = true; });
      this.choices.push({ input: other, editor });
      const clear = radio("clear", [el("span", { text: "Clear the field" })]);
      this.choices.push({ input: clear, body: { value: null } });
    }
    if (!this.choices.some((x) => x.input.checked)) this.choices[0].input.checked = true;
    this.choices.find((x) => x.input.checked).input.focus();
  }

  async send() {
    const pick = this.choices.find((x) => x.input.checked);
    if (!pick) return;
    let body = pick.body;
    if (pick.editor) {
      try {
        body = { value: pick.editor.value() };
      } catch (err) {
        this.fail(err.message);
        return;
      }
    }
    this.error.hidden = true;
    this.submit.disabled = true;
    const expected = this.c.tips.map((t) => t.op_id);
    try {
      const r = await api.post("/conflicts/resolve", {
        conflict_id: this.c.conflict_id, ...body, expected_tips: expected,
      });
      this.m.close(true);
      announce("Conflict resolved");
      await this.owner.ctx.afterWrite(r.seq);
    } catch (err) {
      this.submit.disabled = false;
      if (err.code === "stale_conflict_state") {
        await this.owner.refresh();
        if (this.m.dlg.isConnected) {
          const now = this.owner.list.find((x) => x.conflict_id === this.c.conflict_id);
          if (now) {
            this.c = now;
            await this.render();
          }
          this.showNote("Someone changed this conflict while you were deciding: a new value " +
            "arrived. The choices below are up to date; pick again.");
        }
      } else if (err.code === "conflict_resolved") {
        this.m.close(null);
        toast("Someone else resolved this conflict first.", { kind: "warning" });
        await this.owner.ctx.afterWrite(0);
      } else {
        this.fail(err.message);
      }
    }
  }

  fail(message) {
    this.error.replaceChildren(el("span", { html: icon("error") }),
      document.createTextNode(message));
    this.error.hidden = false;
  }
}

/** A type-appropriate input for a new value: {root, value()} (value() throws ParseError). */
export function valueEditor(f) {
  const kind = f ? F.kindOf(f) : "text";
  const label = "New value";
  let input;
  if (kind === "boolean") {
    input = el("select", { class: "input", "aria-label": label },
      el("option", { value: "true", text: "Yes" }), el("option", { value: "false", text: "No" }));
    return { root: wrap(input), value: () => input.value === "true" };
  }
  if (kind === "enum") {
    input = el("select", { class: "input", "aria-label": label });
    for (const c of F.choicesOf(f)) input.append(el("option", { value: c.key, text: c.label }));
    return { root: wrap(input), value: () => input.value };
  }
  if (kind === "longtext") {
    input = el("textarea", { class: "input textarea", rows: "3", "aria-label": label });
  } else {
    const type = kind === "date" ? "date" : kind === "datetime" ? "datetime-local" : "text";
    input = el("input", { class: "input", type, autocomplete: "off", "aria-label": label,
      placeholder: kind === "duration" ? "h:mm:ss" : "" });
  }
  return {
    root: wrap(input),
    value: () => {
      const v = f ? F.parseInput(f, input.value) : (input.value || null);
      if (v === null) throw new F.ParseError("Type a value, or choose “Clear the field”.");
      return v;
    },
  };
}

function wrap(input) {
  return el("div", { class: "choice-editor" }, input);
}

/** fn() at most once at a time; calls made meanwhile share one follow-up run. */
export function coalesced(fn) {
  let inflight = null;
  let queued = null;
  return () => {
    if (!inflight) {
      inflight = fn().finally(() => { inflight = null; });
      return inflight;
    }
    if (!queued) {
      queued = inflight.catch(() => {}).then(() => {
        queued = null;
        inflight = fn().finally(() => { inflight = null; });
        return inflight;
      });
    }
    return queued;
  };
}
