// The app shell's first start and workspace switching (spec 05 §2, J1–J3): the welcome screen
// that asks for the display name teammates see, the Switch workspace screen (Create workspace
// with optional modules, Join on this network, Open recent), the Invite dialog, and the empty
// workspace's "Adopt a module". The engine decides everything: one workspace is always open
// (a fresh home gets an empty "My Workspace" at its first start), so the welcome screen offers
// to keep it or to create, join or open another; opening one reloads the page's data through
// the engine's `workspace_opened` event.

import * as api from "./api.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { formatCode, setError, showRecoverySecret } from "./access.js";
import { fingerprint, parseAddress } from "./sync.js";
import { newestVersion } from "./modules.js";

const $ = (id) => document.getElementById(id);
const DISCOVER_POLL_MS = 3000;
let uid = 0;

function peersOnline(n) {
  return `${n} ${n === 1 ? "peer" : "peers"} online`;
}

/**
 * Wire the shell's controls and run the first-start check. Called once from app.js `main()`
 * once the page is signed in. Returns the Shell (its methods open the dialogs).
 *
 * @param {object} ctx
 * @param {import("./sync.js").Sync} ctx.sync  the Sync instance (status, join, peer names)
 * @param {(err: any, what: string) => void} ctx.reportError
 * @param {() => object|null} ctx.workspace  the GET /workspace/current answer shown
 * @param {() => Promise<any>|void} ctx.openModules  open the Modules panel (J2 "Adopt a module")
 */
export function mountShell(ctx) {
  const shell = new Shell(ctx);
  shell.mount();
  return shell;
}

export class Shell {
  constructor(ctx) {
    this.ctx = ctx;
    this.switcher = null;
  }

  mount() {
    const on = (id, fn, what) => {
      const b = $(id);
      if (b) b.addEventListener("click", () => Promise.resolve(fn())
        .catch((e) => this.ctx.reportError(e, what)));
    };
    on("switch-workspace-btn", () => this.openSwitcher(), "Couldn't list the workspaces");
    on("invite-btn", () => this.openInvite(), "Couldn't open the invitation");
    on("empty-adopt-module", () => this.ctx.openModules(), "Couldn't open the modules");
    this.firstStart().catch((e) => this.ctx.reportError(e, "Couldn't load your identity"));
  }

  // --- J1: first start ------------------------------------------------------------------

  /** No display name chosen yet (the engine started without --name): welcome, then choose. */
  async firstStart() {
    const me = await api.get("/identity");
    if (me.name_chosen) return;
    const name = await this.askName();
    if (!name) return;
    await this.openSwitcher({ welcome: true });
  }

  /** "What should teammates see as your name?"; resolves with the saved name or null. */
  askName() {
    const n = ++uid;
    const input = el("input", {
      id: `wl-name-${n}`, class: "input", type: "text", autocomplete: "name", maxlength: "100",
      placeholder: "e.g. Alex Moreno", "aria-describedby": `wl-help-${n}`,
    });
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const m = modal({
      title: "Welcome to openprod",
      cls: "welcome-dialog",
      body: [
        el("p", { class: "welcome-lead", text: "Your own copy of the production's data, shared " +
          "with your team over the local network. Everything you change is saved on this " +
          "computer straight away." }),
        el("label", { class: "label", for: `wl-name-${n}`,
          text: "What should teammates see as your name?" }),
        input,
        el("p", { id: `wl-help-${n}`, class: "muted help", text: "It appears next to your " +
          "changes on every teammate's screen." }),
        error,
      ],
      actions: [{ label: "Continue", kind: "btn-primary", type: "submit" }],
    });
    const submit = m.foot.lastChild;
    m.form.addEventListener("submit", async (e) => {
      e.preventDefault();
      setError(error, "");
      const v = input.value.trim();
      if (!v) {
        setError(error, "Type the name teammates should see, e.g. your first name.");
        input.focus();
        return;
      }
      submit.disabled = true;
      try {
        const r = await api.post("/identity/update", { display_name: v });
        $("me").textContent = r.display_name;
        announce(`Your name is now ${r.display_name}`);
        m.close(r.display_name);
      } catch (err) {
        setError(error, err.message || String(err));
        submit.disabled = false;
        input.focus();
      }
    });
    input.focus();
    return m.done;
  }

  // --- J1/J2/J3: Switch workspace ---------------------------------------------------------

  /** Create workspace, Join on this network and Open recent. `welcome`: the first-start
   * wording (the workspace made for you is open; keep it or pick another). */
  async openSwitcher({ welcome = false } = {}) {
    if (this.switcher) return;
    const n = ++uid;
    const ws = this.ctx.workspace() || {};
    const intro = el("p", { class: "welcome-lead" });
    intro.textContent = welcome
      ? `openprod opened “${ws.name || "My Workspace"}”, an empty workspace made for you. ` +
        "Keep it, or create, join or open another. One workspace is open at a time."
      : `Open now: “${ws.name || "this workspace"}”. One workspace is open at a time; ` +
        "your changes in it are saved.";

    const create = el("button", { type: "button", class: "btn btn-primary",
      id: `sw-create-${n}` }, el("span", { html: icon("plus") }), "Create workspace…");
    const found = el("div", { class: "shell-found" });
    const addr = el("input", { id: `sw-addr-${n}`, class: "input", type: "text",
      autocomplete: "off", spellcheck: "false", placeholder: "192.168.1.20:47820",
      "aria-describedby": `sw-addr-help-${n}` });
    const findBtn = el("button", { type: "submit", class: "btn btn-secondary",
      text: "Find workspaces" });
    const addrError = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const addrForm = el("form", { class: "shell-addr", novalidate: true },
      el("label", { class: "label", for: `sw-addr-${n}`,
        text: "Or type the address of a teammate's computer" }),
      el("div", { class: "add-peer-row" }, addr, findBtn),
      el("p", { id: `sw-addr-help-${n}`, class: "muted help", text: "Their Invite dialog " +
        "shows it, e.g. 192.168.1.20:47820. Use it when computers don't find each other " +
        "by themselves." }),
      addrError);
    const recent = el("div", { class: "shell-recent" });

    const m = modal({
      title: welcome ? "Choose a workspace" : "Switch workspace",
      wide: true,
      cls: "switch-dialog",
      body: [
        intro,
        el("section", { class: "shell-section", "aria-labelledby": `sw-h1-${n}` },
          el("h3", { class: "shell-heading", id: `sw-h1-${n}`, text: "Create workspace" }),
          el("p", { class: "muted", text: "Start a new one for a production; you can add " +
            "ready-made tables (modules) right away." }), create),
        el("section", { class: "shell-section", "aria-labelledby": `sw-h2-${n}` },
          el("h3", { class: "shell-heading", id: `sw-h2-${n}`, text: "Join on this network" }),
          found, addrForm),
        el("section", { class: "shell-section", "aria-labelledby": `sw-h3-${n}` },
          el("h3", { class: "shell-heading", id: `sw-h3-${n}`, text: "Open recent" }), recent),
      ],
      actions: [{ label: welcome ? `Keep “${ws.name || "My Workspace"}”` : "Close" }],
    });
    const sw = { m, found, recent, addr, addrError, lookedUp: null, discovered: [],
      discovery: true, timer: null };
    this.switcher = sw;
    m.done.then(() => {
      clearTimeout(sw.timer);
      this.switcher = null;
    });
    create.addEventListener("click", () => {
      m.close(null);
      this.createWorkspace().catch((e) => this.ctx.reportError(e,
        "Couldn't create the workspace"));
    });
    addrForm.addEventListener("submit", (e) => {
      e.preventDefault();
      this.lookUp(sw).catch(() => {});
    });
    found.replaceChildren(el("p", { class: "muted", text: "Looking on this network…" }));
    recent.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
    create.focus();
    await Promise.all([this.loadRecent(sw), this.discover(sw)]);
  }

  async discover(sw) {
    if (this.switcher !== sw) return;
    try {
      const r = await api.get("/workspace/discover");
      sw.discovered = (r.workspaces || []).filter((w) => !w.here);
      sw.discovery = !!r.discovery;
    } catch {
      sw.discovered = [];
    }
    if (this.switcher !== sw) return;
    this.renderFound(sw);
    // mDNS answers trickle in: keep looking while the screen is open
    sw.timer = setTimeout(() => this.discover(sw).catch(() => {}), DISCOVER_POLL_MS);
  }

  async lookUp(sw) {
    setError(sw.addrError, "");
    let a;
    try {
      a = parseAddress(sw.addr.value);
    } catch (err) {
      setError(sw.addrError, err.message);
      sw.addr.focus();
      return;
    }
    try {
      const q = new URLSearchParams({ host: a.host, port: String(a.port) });
      const r = await api.get(`/workspace/discover?${q}`);
      const list = (r.workspaces || []).map((w) => ({ ...w, host: a.host, port: a.port }));
      sw.lookedUp = list;
      if (!list.length) setError(sw.addrError, `The computer at ${r.address} has no workspace ` +
        "to join yet.");
      else if (list.every((w) => w.here)) setError(sw.addrError, `“${list[0].name}” at ` +
        `${r.address} is already on this computer: open it under Open recent.`);
      this.renderFound(sw);
    } catch (err) {
      setError(sw.addrError, err.code === "peer_unreachable"
        ? `No openprod answered at ${a.host}:${a.port}. Check the address, and that openprod ` +
          "is running there."
        : err.message || String(err));
    }
  }

  renderFound(sw) {
    const rows = [...(sw.lookedUp || []).filter((w) => !w.here), ...sw.discovered];
    if (!rows.length) {
      sw.found.replaceChildren(el("p", { class: "muted", text: sw.discovery
        ? "No other workspace found on this network yet. A teammate's workspace appears here " +
          "while their openprod is running."
        : "Finding workspaces automatically is off on this computer: type the address " +
          "instead." }));
      return;
    }
    const ul = el("ul", { class: "peer-list", "aria-label": "Workspaces on this network" });
    for (const w of rows) {
      const join = el("button", { type: "button", class: "btn btn-secondary btn-sm",
        text: "Join", "aria-label": `Join ${w.name}` });
      join.addEventListener("click", async () => {
        join.disabled = true;
        if (await this.ctx.sync.join(w)) sw.m.close(null);
        else join.disabled = false;
      });
      ul.append(el("li", { class: "peer-item" },
        el("div", { class: "peer-main" },
          el("div", { class: "peer-title" }, el("span", { class: "shell-ws-name", text: w.name }),
            el("code", { text: String(w.gh || "").slice(0, 8),
              title: "Workspace ID fingerprint: compare it with the one in the Invite dialog" }),
            w.join === "key" ? el("span", { class: "tag tag-warn",
              text: "Access code needed" }) : ""),
          el("div", { class: "peer-meta", text: w.host ? `at ${w.host}:${w.port}`
            : peersOnline(w.peers_online || 0) })),
        join));
    }
    sw.found.replaceChildren(ul);
  }

  async loadRecent(sw) {
    let list;
    try {
      list = (await api.get("/workspace/list")).workspaces || [];
    } catch (err) {
      sw.recent.replaceChildren(el("p", { class: "dialog-error", text: err.message }));
      return;
    }
    if (this.switcher !== sw) return;
    list.sort((a, b) => (b.open - a.open) || a.name.localeCompare(b.name));
    const ul = el("ul", { class: "peer-list", "aria-label": "Workspaces on this computer" });
    for (const w of list) {
      const tags = [];
      if (w.open) tags.push(el("span", { class: "tag tag-ok", text: "Open now" }));
      if (w.state === "joining") tags.push(el("span", { class: "tag tag-warn",
        text: "Still arriving" }));
      const li = el("li", { class: "peer-item" },
        el("div", { class: "peer-main" },
          el("div", { class: "peer-title" },
            el("span", { class: "shell-ws-name", text: w.name }), ...tags)));
      if (!w.open) {
        const b = el("button", { type: "button", class: "btn btn-secondary btn-sm",
          text: "Open", "aria-label": `Open ${w.name}` });
        b.addEventListener("click", async () => {
          b.disabled = true;
          try {
            await api.post("/workspace/open", { id: w.id });
            sw.m.close(null);
            announce(`Opened ${w.name}`);
          } catch (err) {
            b.disabled = false;
            this.ctx.reportError(err, `Couldn't open “${w.name}”`);
          }
        });
        li.append(b);
      }
      ul.append(li);
    }
    sw.recent.replaceChildren(ul);
  }

  // --- J2: create a workspace with modules ----------------------------------------------

  /** Name a workspace and tick modules: creates it (the engine opens it), adopts the modules,
   * then shows the recovery key once. Resolves with the new workspace id or null. */
  async createWorkspace() {
    const n = ++uid;
    const name = el("input", { id: `cw-name-${n}`, class: "input", type: "text",
      autocomplete: "off", placeholder: "e.g. Summer tour", "aria-describedby": `cw-help-${n}` });
    const mods = el("fieldset", { class: "shell-modules" },
      el("legend", { class: "label", text: "Modules (optional)" }),
      el("p", { class: "muted help", text: "Ready-made tables to start with. You can adopt " +
        "more later from Modules." }));
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const m = modal({
      title: "New workspace",
      body: [el("label", { class: "label", for: `cw-name-${n}`, text: "Workspace name" }), name,
        el("p", { id: `cw-help-${n}`, class: "muted help", text: "You will own it: you decide " +
          "who can join, and get its recovery key." }), mods, error],
      actions: [{ label: "Cancel" },
        { label: "Create workspace", kind: "btn-primary", type: "submit" }],
    });
    name.focus();
    const boxes = [];
    try {
      const list = (await api.get("/modules/list")).modules || [];
      for (const mod of list) {
        const version = newestVersion(mod);
        if (!version) continue;
        const box = el("input", { type: "checkbox", value: mod.id, "data-version": version });
        boxes.push({ box, mod, version });
        mods.append(el("label", { class: "shell-module" }, box,
          el("span", {}, el("strong", { text: mod.name || mod.id }),
            mod.description ? el("span", { class: "muted", text: ` — ${mod.description}` })
              : "")));
      }
    } catch {
      mods.append(el("p", { class: "muted", text: "The modules could not be listed; adopt " +
        "them later from Modules." }));
    }
    const submit = m.foot.lastChild;
    m.form.addEventListener("submit", async (e) => {
      e.preventDefault();
      setError(error, "");
      const v = name.value.trim();
      if (!v) {
        setError(error, "Give the workspace a name.");
        name.focus();
        return;
      }
      submit.disabled = true;
      submit.textContent = "Creating…";
      let r;
      try {
        r = await api.post("/workspace/create", { name: v });
      } catch (err) {
        setError(error, err.message || String(err));
        submit.disabled = false;
        submit.textContent = "Create workspace";
        return;
      }
      // the engine opened the new workspace: adopt what was ticked there, one after the other
      const failed = [];
      for (const { box, mod, version } of boxes) {
        if (!box.checked) continue;
        submit.textContent = `Adding ${mod.name || mod.id}…`;
        try {
          await api.post("/modules/adopt", { id: mod.id, version });
        } catch (err) {
          failed.push(`${mod.name || mod.id} (${err.message || err})`);
        }
      }
      m.close({ ...r, failed });
    });
    const r = await m.done;
    if (!r) return null;
    announce("Workspace created");
    if (r.failed.length) {
      toast(`The workspace was created, but these modules could not be added: ` +
        `${r.failed.join("; ")}. Adopt them from Modules.`, { kind: "error", timeout: 12000 });
    }
    if (r.recovery_secret) {
      await showRecoverySecret(r.recovery_secret, { title: "Save the recovery key" });
    }
    return r.workspace_id;
  }

  // --- J3: invite -------------------------------------------------------------------------

  /** Who can join and how: the workspace name, its ID fingerprint, this computer's address,
   * the access mode (with a New access code shortcut for the owner). */
  async openInvite() {
    const [st, lc] = await Promise.all([api.get("/sync/status"),
      api.get("/workspace/lifecycle").catch(() => null)]);
    const ws = this.ctx.workspace() || {};
    const where = (st.addresses || []).map((a) => `${a}:${st.port}`);
    const code = el("div", { class: "access-fresh", "aria-live": "polite" });
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const body = [
      el("dl", { class: "invite-facts" },
        el("dt", { text: "Workspace" }), el("dd", { class: "invite-name", text: ws.name || "" }),
        el("dt", { text: "ID fingerprint" }),
        el("dd", {}, el("code", { class: "invite-fp", text: fingerprint(st.genesis) || "…" }),
          el("span", { class: "muted", text: " — teammates see the same letters next to it " +
            "when they join" })),
        el("dt", { text: "This computer's address" }),
        el("dd", { class: "invite-addr" }, ...(st.port && where.length
          ? where.flatMap((a, i) => [i ? ", " : "", el("code", { text: a })])
          : [el("span", { class: "muted", text: "This engine does not listen for teammates " +
            "(started without a sync port)." })]))),
      el("p", { class: "muted", text: st.discovery
        ? "On their computer: Switch… → Join on this network, and pick this workspace; if it " +
          "does not show up, they type the address above."
        : "Finding workspaces automatically is off on this computer: teammates type the " +
          "address above under Switch… → Join on this network." }),
    ];
    if (lc) {
      if (lc.join_mode === "key") {
        body.push(el("p", { class: "invite-mode" }, el("strong", { text: "Access code" }),
          " — people need a code ", lc.is_owner ? "you give them." : "from the owner."));
        if (lc.is_owner) {
          const b = el("button", { type: "button", class: "btn btn-primary btn-sm",
            text: "New access code" });
          b.addEventListener("click", async () => {
            setError(error, "");
            b.disabled = true;
            try {
              const k = await api.post("/access-keys/create", {});
              code.replaceChildren(el("div", { class: "access-code-card" },
                el("p", { class: "muted", text: "Read this code to the person joining:" }),
                el("p", { class: "access-code-big", "aria-label":
                  `Access code ${[...k.code].join(" ")}`, text: formatCode(k.code) })));
              announce(`New access code ${[...k.code].join(" ")}`);
            } catch (err) {
              setError(error, `Couldn't create an access code: ${err.message || err}`);
            } finally {
              b.disabled = false;
            }
          });
          body.push(b, code, error);
        }
      } else {
        body.push(el("p", { class: "invite-mode" }, el("strong", { text: "Open" }),
          " — anyone on this network can join."));
      }
    }
    body.push(el("p", { class: "invite-edit", text: "In this version everyone who joins can " +
      "edit." }));
    const m = modal({ title: "Invite teammates", cls: "invite-dialog", body,
      actions: [{ label: "Close" }] });
    m.foot.lastChild.focus();
    return m.done;
  }
}
