// Modules in the UI (spec 05 J4; spec 04 §1, §4): the modules panel (built-in and installed
// modules, Adopt, Install from a folder or .zip), the field-mapping review dialog (Same field /
// Keep separate; nothing maps itself), and module views mounted in sandboxed iframes that get
// data only through a small postMessage bridge (reads of their module's tables in V1).

import * as api from "./api.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { coalesced } from "./conflicts.js";

/** "1.10.0" > "1.9.3": compare X.Y.Z versions numerically. */
export function compareVersions(a, b) {
  const pa = String(a).split(".").map(Number);
  const pb = String(b).split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    if ((pa[i] || 0) !== (pb[i] || 0)) return (pa[i] || 0) - (pb[i] || 0);
  }
  return 0;
}

/** The newest version this user can adopt (installed or built in), or null. */
export function newestVersion(m) {
  const all = [...(m.installed || []), ...(m.builtin ? [m.builtin] : [])];
  return all.sort(compareVersions).pop() || null;
}

/** "People · Email" for one side of a mapping (`a` / `b` of GET /field-mappings/list). */
export function fieldName(f) {
  return `${f.table_label || f.table} · ${f.label || f.field}`;
}

export function pairName(p) {
  return `${fieldName(p.a)} ↔ ${fieldName(p.b)}`;
}

const MSG = { query: "openprod.query", answer: "openprod.answer", changed: "openprod.changed" };

/**
 * The document of a view's sandboxed iframe: a strict CSP (scripts only from this module's
 * views folder and the one inline bootstrap; no fetch/XHR/WebSocket, so data arrives only
 * through the bridge), then the bootstrap that imports the entry and calls
 * `mount(document.body, api)`.
 */
function viewDocument(entryUrl, viewsBase, nonce) {
  const csp = `default-src 'none'; script-src 'nonce-${nonce}' ${viewsBase}; ` +
    `style-src 'unsafe-inline' ${viewsBase}; img-src data: ${viewsBase}; font-src ${viewsBase}`;
  const boot = `
const pending = new Map();
const listeners = new Set();
let next = 0;
window.addEventListener("message", (e) => {
  if (e.source !== window.parent) return;
  const m = e.data || {};
  if (m.type === ${JSON.stringify(MSG.answer)} && pending.has(m.id)) {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.error) p.reject(new Error(m.error)); else p.resolve(m.records);
  } else if (m.type === ${JSON.stringify(MSG.changed)}) {
    for (const fn of [...listeners]) { try { fn(m.table); } catch (err) { console.error(err); } }
  }
});
const api = Object.freeze({
  query(query) {
    return new Promise((resolve, reject) => {
      const id = ++next;
      pending.set(id, { resolve, reject });
      window.parent.postMessage({ type: ${JSON.stringify(MSG.query)}, id, query }, "*");
    });
  },
  onChange(fn) { listeners.add(fn); return () => listeners.delete(fn); },
});
try {
  const mod = await import(${JSON.stringify(entryUrl)});
  mod.mount(document.body, api);
} catch (err) {
  const p = document.createElement("p");
  p.className = "view-error";
  p.textContent = "This view could not be loaded: " + (err && err.message || err);
  document.body.replaceChildren(p);
}`;
  const style = `
body { margin: 0; padding: 12px 16px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, sans-serif; color: #1d2330; background: #fff; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e3e6ec; }
th { font-size: 12.5px; color: #5b6475; font-weight: 600; background: #f6f7f9; }
.view-error { color: #b42318; }`;
  return `<!doctype html><html><head><meta charset="utf-8">` +
    `<meta http-equiv="Content-Security-Policy" content="${csp}">` +
    `<style>${style}</style></head><body>` +
    `<script type="module" nonce="${nonce}">${boot}</` + `script></body></html>`;
}

function randomNonce() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * @param {object} ctx
 *   reportError(err, what), afterAdopt(seq): Promise (refresh the tables),
 *   viewsChanged() (the modules list changed: re-offer views for the open table)
 */
export class Modules {
  constructor(ctx) {
    this.ctx = ctx;
    this.modules = [];
    this.panel = null;
    this.mappings = null; // the open mapping dialog
    this.refresh = coalesced(() => this.load());
  }

  async load() {
    const r = await api.get("/modules/list");
    this.modules = r.modules || [];
    this.ctx.viewsChanged();
    if (this.panel) this.renderPanel();
  }

  /** Views of adopted modules for a table: [{name, label, table, entry, url, module}]. */
  viewsFor(tableId) {
    const out = [];
    for (const m of this.modules) {
      if (!m.adopted) continue;
      for (const v of m.views || []) {
        if (v.table === tableId && v.url) out.push({ ...v, module: m.id });
      }
    }
    return out;
  }

  // --- the panel ----------------------------------------------------------------------------

  async openPanel() {
    if (this.panel) return;
    const list = el("ul", { class: "module-list", "aria-label": "Modules" });
    const input = el("input", {
      id: "install-module-path", class: "input", type: "text", autocomplete: "off",
      placeholder: "/home/me/modules/gear or /home/me/gear.zip",
      "aria-describedby": "install-module-help",
    });
    const error = el("div", { class: "dialog-error module-install-error", role: "alert",
      hidden: true });
    const submit = el("button", { type: "submit", class: "btn btn-primary", text: "Install" });
    const form = el("form", { class: "install-module", novalidate: true },
      el("label", { class: "label", for: "install-module-path",
        text: "Install from a folder or .zip" }),
      el("div", { class: "add-peer-row" }, input, submit),
      el("p", { id: "install-module-help", class: "muted help",
        text: "The absolute path of a module package on this computer. Installing makes its " +
          "views available to you only; adopting adds its tables for everyone in the " +
          "workspace." }),
      error);
    const intro = el("p", { class: "panel-intro muted",
      text: "Modules bring ready-made tables and views. Adopting one adds its tables to this " +
        "workspace for everyone; afterwards you choose which fields hold the same data." });
    this.panel = { list, input, error, submit };
    const m = modal({
      title: "Modules", wide: true, body: [intro, list, form],
      actions: [
        { label: "Field mappings", run: () => this.openMappings()
          .catch((e) => this.ctx.reportError(e, "Couldn't load the field mappings")) },
        { label: "Close" },
      ],
    });
    this.panel.modal = m;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.install(input.value).catch(() => {});
    });
    m.done.then(() => { this.panel = null; });
    this.renderPanel();
    await this.refresh().catch((e) => this.ctx.reportError(e, "Couldn't load the modules"));
  }

  renderPanel() {
    const { list } = this.panel;
    list.replaceChildren();
    if (!this.modules.length) {
      list.append(el("li", { class: "muted", text: "No modules available." }));
      return;
    }
    for (const m of this.modules) {
      const newest = newestVersion(m);
      const tags = el("span", { class: "module-tags" },
        el("code", { class: "module-id", text: `${m.id} ${newest || ""}`.trim() }));
      if (m.adopted) {
        tags.append(el("span", { class: "tag tag-ok", text: `Adopted ${m.adopted}` }));
      } else {
        tags.append(el("span", { class: "tag", text: "Not adopted" }));
      }
      if (m.builtin) tags.append(el("span", { class: "tag", text: "Built in" }));
      if ((m.installed || []).length) {
        tags.append(el("span", { class: "tag tag-accent",
          text: `Installed ${m.installed.join(", ")}` }));
      }
      const li = el("li", { class: "module-item", "data-module": m.id },
        el("div", { class: "peer-main" },
          el("div", { class: "peer-title" }, el("span", { text: m.name || m.id }), tags),
          m.description ? el("p", { class: "peer-meta", text: m.description }) : "",
          (m.views || []).length ? el("p", { class: "peer-meta",
            text: `Views: ${m.views.map((v) => v.label || v.name).join(", ")}` }) : ""));
      const canAdopt = newest && (!m.adopted || compareVersions(newest, m.adopted) > 0);
      if (canAdopt) {
        const label = m.adopted ? `Update to ${newest}` : "Adopt";
        const b = el("button", { type: "button", class: "btn btn-primary btn-sm", text: label,
          "aria-label": `${label} ${m.name || m.id}` });
        b.addEventListener("click", () => this.adopt(m, newest, b).catch(() => {}));
        li.append(b);
      }
      if (this.ctx.decorate) this.ctx.decorate(m, li); // e.g. "1 rule offered — Open Rules"
      list.append(li);
    }
  }

  async adopt(m, version, button) {
    button.disabled = true;
    const name = m.name || m.id;
    try {
      const r = await api.post("/modules/adopt", { id: m.id, version });
      await Promise.all([this.ctx.afterAdopt(r.seq),
        this.refresh().catch((e) => this.ctx.reportError(e, "Couldn't load the modules"))]);
      announce(r.changed ? `${name} adopted` : `${name} was adopted already`);
      if (r.changed) toast(`${name} adopted: ${(r.tables || []).length} table(s) added`);
      const lists = await api.get("/field-mappings/list", { after: r.seq });
      if ((lists.suggestions || []).length) await this.openMappings(lists);
    } catch (err) {
      button.disabled = false;
      this.ctx.reportError(err, `Couldn't adopt ${name}`);
    }
  }

  async install(path) {
    const { error, input, submit } = this.panel;
    error.hidden = true;
    error.replaceChildren();
    const text = (path || "").trim();
    if (!text) {
      this.installError("Enter the absolute path of a module folder or .zip file.");
      input.focus();
      return;
    }
    submit.disabled = true;
    try {
      const r = await api.post("/modules/install", { path: text });
      input.value = "";
      const what = `${r.name || r.id} ${r.version}`;
      toast(r.installed ? `Installed ${what}` : `${what} was installed already`);
      for (const w of r.warnings || []) toast(`${what}: ${w.message || w}`, { kind: "warning" });
      announce(`Installed ${what}`);
      await this.refresh();
    } catch (err) {
      if (err.code === "unauthorized") return;
      const errors = (err.details && err.details.errors) || [];
      this.installError(err.code === "invalid_module"
        ? "This is not a valid module package:" : err.message, errors);
    } finally {
      if (this.panel) this.panel.submit.disabled = false;
    }
  }

  installError(message, errors = []) {
    if (!this.panel) return;
    const { error } = this.panel;
    const head = el("p", { class: "module-error-head" }, el("span", { html: icon("error") }),
      document.createTextNode(message));
    const parts = [head];
    if (errors.length) {
      const ul = el("ul", { class: "module-errors", "aria-label": "Problems in the package" });
      for (const e of errors) {
        ul.append(el("li", {},
          el("code", { class: "module-error-path", text: e.path || "(package)" }),
          document.createTextNode(` — ${e.message || e.code}`),
          e.code ? el("span", { class: "muted", text: ` (${e.code})` }) : ""));
      }
      parts.push(ul);
    }
    error.replaceChildren(...parts);
    error.hidden = false;
  }

  // --- field mappings -----------------------------------------------------------------------

  /** The mapping review dialog; `lists` is a GET /field-mappings/list answer when known. */
  async openMappings(lists = null) {
    if (this.mappings) {
      await this.loadMappings();
      return this.mappings.modal.done;
    }
    const body = el("div", { class: "mapping-sections" });
    this.mappings = { body, lists };
    const m = modal({
      title: "Field mappings", wide: true,
      body: [el("p", { class: "panel-intro muted",
        text: "Modules describe some of their fields as the same kind of data. Choose Same " +
          "field to make two fields one value everywhere, or Keep separate — nothing is " +
          "linked until you decide, and every peer sees your choice." }), body],
      actions: [{ label: "Done", kind: "btn-primary" }],
    });
    this.mappings.modal = m;
    m.done.then(() => { this.mappings = null; });
    if (lists) this.renderMappings(); else await this.loadMappings();
    return m.done;
  }

  async loadMappings(seq = 0) {
    const lists = await api.get("/field-mappings/list", { after: seq || undefined });
    if (!this.mappings) return;
    this.mappings.lists = lists;
    this.renderMappings();
  }

  renderMappings() {
    const { body, lists } = this.mappings;
    const focused = document.activeElement && body.contains(document.activeElement);
    const sugg = lists.suggestions || [];
    const suggested = el("ul", { class: "mapping-list", "aria-label": "Suggested mappings" });
    for (const p of sugg) {
      const li = el("li", { class: `mapping-item${p.compatible ? "" : " is-incompatible"}`,
        "data-keys": `${p.key_a} ${p.key_b}` }, this.pairView(p));
      if (p.compatible) {
        const name = pairName(p);
        const same = el("button", { type: "button", class: "btn btn-primary btn-sm",
          text: "Same field", "aria-label": `Same field: ${name}` });
        const sep = el("button", { type: "button", class: "btn btn-secondary btn-sm",
          text: "Keep separate", "aria-label": `Keep separate: ${name}` });
        same.addEventListener("click", () => this.decide("confirm", p, li).catch(() => {}));
        sep.addEventListener("click", () => this.decide("reject", p, li).catch(() => {}));
        li.append(el("div", { class: "mapping-actions" }, same, sep));
      } else {
        li.setAttribute("aria-disabled", "true");
        li.querySelector(".mapping-main").append(el("p", { class: "mapping-reason",
          text: `Can't be one field: different types (${p.reason || "incompatible"})` }));
      }
      suggested.append(li);
    }
    if (!sugg.length) {
      suggested.append(el("li", { class: "muted mapping-empty",
        text: "No suggestions: every suggested pair has been decided." }));
    }
    const decided = (items, label, empty) => {
      const ul = el("ul", { class: "mapping-list mapping-decided", "aria-label": label });
      for (const p of items) {
        ul.append(el("li", { class: "mapping-item", "data-keys": `${p.key_a} ${p.key_b}` },
          this.pairView(p)));
      }
      if (!items.length) ul.append(el("li", { class: "muted mapping-empty", text: empty }));
      return ul;
    };
    body.replaceChildren(
      el("h3", { class: "label", text: "Suggested" }), suggested,
      el("h3", { class: "label", text: "Same field" }),
      decided(lists.confirmed || [], "Confirmed mappings", "None yet."),
      el("h3", { class: "label", text: "Kept separate" }),
      decided(lists.rejected || [], "Kept separate", "None yet."));
    if (focused && !body.contains(document.activeElement)) {
      const next = body.querySelector(".mapping-actions button") ||
        this.mappings.modal.foot.querySelector("button");
      if (next) next.focus();
    }
  }

  pairView(p) {
    const a = p.a || { table: "", field: p.key_a };
    const b = p.b || { table: "", field: p.key_b };
    return el("div", { class: "mapping-main" },
      el("p", { class: "mapping-pair" },
        el("span", { class: "mapping-field", text: fieldName(a) }),
        el("span", { class: "mapping-arrow", "aria-label": "and", text: " ↔ " }),
        el("span", { class: "mapping-field", text: fieldName(b) })),
      el("p", { class: "mapping-keys muted" },
        el("code", { text: p.key_a }), document.createTextNode(" ↔ "),
        el("code", { text: p.key_b }),
        p.a && p.b && p.a.type ? document.createTextNode(
          p.a.type === p.b.type ? ` · ${p.a.type}` : ` · ${p.a.type} / ${p.b.type}`) : ""));
  }

  async decide(kind, p, li) {
    for (const b of li.querySelectorAll("button")) b.disabled = true;
    try {
      const r = await api.post(`/field-mappings/${kind}`, { key_a: p.key_a, key_b: p.key_b });
      announce(kind === "confirm" ? `${pairName(p)}: same field` : `${pairName(p)}: kept separate`);
      await this.loadMappings(r.seq);
    } catch (err) {
      for (const b of li.querySelectorAll("button")) b.disabled = false;
      this.ctx.reportError(err, kind === "confirm" ? "Couldn't link the fields"
        : "Couldn't keep the fields separate");
    }
  }

  // --- views --------------------------------------------------------------------------------

  /**
   * Mount a module view in `host`: a sandboxed iframe (scripts only, opaque origin: no cookie,
   * no token, no access to this page) whose only data is what the bridge answers.
   * Returns {changed(table), unmount()}.
   */
  mountView(host, view) {
    const entry = new URL(view.url, location.origin);
    // the bridge answers only reads of this module's own tables
    const moduleBase = entry.pathname.split("/").slice(0, 4).join("/") + "/views/";
    const prefix = `${view.module}.`;
    const frame = el("iframe", {
      class: "module-view-frame", sandbox: "allow-scripts",
      title: `${view.label || view.name} — module view`, "data-view": view.name,
    });
    frame.setAttribute("srcdoc", viewDocument(entry.href, new URL(moduleBase, entry).href,
      randomNonce()));
    const read = new Set();
    const onMessage = async (e) => {
      if (e.source !== frame.contentWindow) return;
      const m = e.data;
      if (!m || m.type !== MSG.query) return;
      let reply;
      try {
        const q = m.query || {};
        const table = typeof q.table === "string" ? q.table : view.table;
        if (!table.startsWith(prefix)) {
          throw new Error(`a view of ${view.module} can read only its module's tables`);
        }
        const r = await api.get("/records/list", { table });
        read.add(table);
        reply = { type: MSG.answer, id: m.id,
          records: r.records.map((x) => ({ id: x.id, values: x.values })) };
      } catch (err) {
        reply = { type: MSG.answer, id: m.id, error: err.message || String(err) };
      }
      // an opaque-origin frame can only be addressed with "*"; the window is the frame's own
      if (frame.contentWindow) frame.contentWindow.postMessage(reply, "*");
    };
    window.addEventListener("message", onMessage);
    host.replaceChildren(frame);
    return {
      view,
      changed(table) {
        if ((read.has(table) || table === view.table) && frame.contentWindow) {
          frame.contentWindow.postMessage({ type: MSG.changed, table }, "*");
        }
      },
      unmount() {
        window.removeEventListener("message", onMessage);
        frame.remove();
      },
    };
  }
}
