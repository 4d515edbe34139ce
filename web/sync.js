// LAN sync in the UI (spec 05 J3, J15; spec 03 §4, §8): the top-bar status and the peers panel.
// The engine owns every decision (who to dial, what to send); the UI shows GET /sync/status,
// re-asks when a sync event arrives, and sends the user's manual peers to /sync/peers.

import * as api from "./api.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal } from "./dialogs.js";
import { toast, announce } from "./toast.js";
import { coalesced, when } from "./conflicts.js";
import { AccessSection, joinWithCodeDialog } from "./access.js";
import { onAnyEvent } from "./events.js";

const $ = (id) => document.getElementById(id);
const num = new Intl.NumberFormat(); // 1,240

// file downloads starting, progressing and ending change "Fetching files · n" (J15); the app
// hands these to the Files module, so they reach us through an event-stream tap
const BLOB_EVENTS = new Set(["blob_fetch_progress", "blob_available", "blob_fetch_failed"]);

const EVENTS = new Set([
  "sync_peer_connected", "sync_peer_disconnected", "sync_progress", "sync_caught_up",
  "sync_converged", "sync_divergence", "peer_discovered", "peer_lost", "workspace_joined",
  "sync_workspace_collision",
]);

// a member refused this engine at the handshake: no access code, or a wrong/expired/used-up one
const CLOSE_JOIN_REFUSED = 4004;
// while a workspace is arriving, re-ask the status this often: a refused handshake (4004) never
// became a link, so no event reports it
const JOINING_POLL_MS = 3000;

/** The key fingerprint people compare: the first 8 hex digits of the peer's actor id. */
export function fingerprint(peerId) {
  return peerId ? String(peerId).slice(0, 8) : "";
}

function changesLeft(n) {
  return `${num.format(n)} ${n === 1 ? "change" : "changes"} left`;
}

/** {state, text} of the top-bar indicator for a /sync/status answer (J15, J3). */
export function describe(st) {
  if (!st) return { state: "offline", text: "Offline — all changes saved locally" };
  const n = st.connected || 0;
  const left = st.remaining || 0;
  if (st.joining) {
    if (left > 0) return { state: "catching-up", text: `Receiving workspace… ${changesLeft(left)}` };
    return n ? { state: "catching-up", text: "Receiving workspace…" }
      : { state: "offline", text: "Waiting for a peer to receive the workspace" };
  }
  if (n === 0) return { state: "offline", text: "Offline — all changes saved locally" };
  if (left > 0) return { state: "catching-up", text: `Catching up · ${changesLeft(left)}` };
  if (st.fetching > 0) return { state: "catching-up", text: `Fetching files · ${num.format(st.fetching)}` };
  return { state: "connected", text: `Connected · ${n} ${n === 1 ? "peer" : "peers"}` };
}

/** "Alex", "Alex and Jordan", "Alex, Jordan and Sam", "Alex, Jordan and 3 others". */
export function nameList(names) {
  if (names.length <= 1) return names.join("");
  if (names.length <= 3) return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
  return `${names.slice(0, 2).join(", ")} and ${names.length - 2} others`;
}

/** The toast after a catch-up (J15): "12 changes from Alex and Jordan · 2 conflicts", or null
 * when it brought nothing. `names` maps actor ids to display names known otherwise. */
export function catchUpSummary(ev, names = new Map()) {
  const n = ev.changes || 0;
  if (!n) return null;
  const who = (ev.authors || []).map((a) => a.name || names.get(a.actor_id) ||
    `someone (${fingerprint(a.actor_id)})`);
  let text = `${num.format(n)} ${n === 1 ? "change" : "changes"}`;
  if (who.length) text += ` from ${nameList(who)}`;
  const c = ev.conflicts || 0;
  if (c) text += ` · ${num.format(c)} ${c === 1 ? "conflict" : "conflicts"}`;
  return text;
}

/** "host:port" → {host, port}, or throws an Error saying what is wrong. */
export function parseAddress(text) {
  const m = /^\s*([^\s:/]+):(\d{1,5})\s*$/.exec(text || "");
  if (!m) throw new Error("Enter the peer as host:port, e.g. 192.168.1.20:47820.");
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new Error("The port must be between 1 and 65535.");
  return { host: m[1], port };
}

/**
 * @param {object} ctx  reportError(err, what), reload() (re-query everything on screen),
 *   workspace() (the GET /workspace/current answer shown)
 */
export class Sync {
  constructor(ctx) {
    this.ctx = ctx;
    this.status = null;
    this.discovered = [];
    this.lookedUp = null; // workspaces found at an address typed in the panel
    this.panel = null;
    this.refresh = coalesced(() => this.load());
    this.codeGiven = new Set(); // workspaces joined with an access code from this page
    this.refused = new Set(); // joining workspaces whose members answered 4004
    this.poll = null;
    $("sync-status").addEventListener("click", () => this.openPanel());
    onAnyEvent((ev) => {
      if (BLOB_EVENTS.has(ev.type)) this.refresh().catch(() => {});
    });
  }

  async load() {
    this.status = await api.get("/sync/status");
    this.render();
    clearTimeout(this.poll);
    if (this.status.joining) {
      if ((this.status.peers || []).some((p) => p.last_code === CLOSE_JOIN_REFUSED)) {
        this.joinRefused();
      }
      this.poll = setTimeout(() => this.refresh().catch(() => {}), JOINING_POLL_MS);
    }
    if (this.panel) {
      try {
        this.discovered = (await api.get("/workspace/discover")).workspaces || [];
      } catch {
        this.discovered = [];
      }
      const { access } = this.panel;
      await access.load().catch((e) => this.ctx.reportError(e, "Couldn't load who can join"));
      if (this.panel && this.panel.access === access) access.render();
      this.renderPanel();
    }
  }

  /** The join of the open workspace was refused with 4004 (once per workspace). */
  joinRefused() {
    const ws = this.status && this.status.workspace_id;
    if (!ws || this.refused.has(ws)) return;
    this.refused.add(ws);
    toast(this.refusedText(ws), { kind: "error", timeout: 0 });
    this.renderPanel();
  }

  refusedText(ws) {
    return this.codeGiven.has(ws)
      ? "The access code was refused — ask the owner for a new one."
      : "This workspace's members refused this computer: joining needs an access code — ask " +
        "the owner for one.";
  }

  /** Display names by actor id, for the owner line. */
  names() {
    const st = this.status || {};
    const m = new Map();
    for (const p of [...(st.last_seen || []), ...(st.peers || [])]) {
      if (p.peer_id && p.name) m.set(p.peer_id, p.name);
    }
    return m;
  }

  render() {
    const { state, text } = describe(this.status);
    const b = $("sync-status");
    const was = b.dataset.state;
    b.dataset.state = state;
    $("sync-status-text").textContent = text;
    b.title = state === "offline"
      ? "No peer is connected. Your changes are saved here and sync when a peer is back."
      : "Open the peers panel";
    if (was && was !== state && state === "connected") announce(text);
  }

  /** A sync or workspace event from WS /events. */
  onEvent(ev) {
    if (!EVENTS.has(ev.type)) return false;
    if (ev.type === "sync_progress" && this.status && !this.status.joining) {
      // show the number the event carries at once; the status query confirms it
      const p = (this.status.peers || []).find((x) => x.peer_id === ev.peer_id);
      if (p) {
        p.remaining = ev.remaining;
        this.status.remaining = (this.status.peers || [])
          .reduce((s, x) => s + (x.state === "connected" ? x.remaining || 0 : 0), 0);
        this.render();
      }
    }
    if (ev.type === "workspace_joined") {
      toast("Workspace received — you are now in sync with your team.");
      this.ctx.reload();
    }
    if (ev.type === "sync_caught_up") {
      const text = catchUpSummary(ev, this.names());
      if (text) {
        toast(text, ev.conflicts ? { kind: "warning", timeout: 12000 } : {});
        announce(text);
      }
    }
    if (ev.type === "sync_peer_disconnected" && ev.code === CLOSE_JOIN_REFUSED &&
      this.status && this.status.joining) {
      this.joinRefused();
    }
    if (ev.type === "sync_workspace_collision") {
      toast("A peer has a different workspace with the same id; it was not synced.",
        { kind: "warning", timeout: 12000 });
    }
    this.refresh().catch(() => {});
    return true;
  }

  // --- the peers panel ------------------------------------------------------------------

  async openPanel() {
    if (this.panel) return;
    const list = el("div", { class: "peer-sections" });
    const input = el("input", {
      id: "add-peer-input", class: "input", type: "text", autocomplete: "off",
      placeholder: "192.168.1.20:47820", "aria-describedby": "add-peer-help",
    });
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const add = el("button", { type: "submit", class: "btn btn-primary", text: "Add peer" });
    const lookup = el("button", { type: "button", class: "btn btn-secondary",
      text: "Workspaces there" });
    lookup.addEventListener("click", () => this.lookUp(input.value).catch(() => {}));
    const form = el("form", { class: "add-peer", novalidate: true },
      el("label", { class: "label", for: "add-peer-input", text: "Add peer by address" }),
      el("div", { class: "add-peer-row" }, input, add, lookup),
      el("p", {
        id: "add-peer-help", class: "muted help",
        text: "Use this when computers don't find each other automatically (e.g. multicast " +
          "is blocked). Give the other computer's address and its sync port; it is " +
          "retried until you remove it. \u201cWorkspaces there\u201d lists what that " +
          "computer serves, to join one.",
      }),
      error);
    const intro = el("div", { class: "panel-intro" });
    const access = new AccessSection({
      reportError: this.ctx.reportError,
      names: () => this.names(),
      changed: () => this.refresh().catch((e) => this.ctx.reportError(e,
        "Couldn't load the sync status")),
    });
    this.panel = { list, intro, input, error, access };
    const m = modal({ title: "Sync and peers", wide: true,
      body: [intro, access.root, list, form], actions: [{ label: "Close" }] });
    this.panel.modal = m;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.addPeer(input.value).catch(() => {});
    });
    m.done.then(() => { this.panel = null; });
    this.renderPanel();
    input.focus();
    await this.load().catch((e) => this.ctx.reportError(e, "Couldn't load the sync status"));
  }

  showError(msg) {
    const { error } = this.panel;
    error.replaceChildren(el("span", { html: icon("error") }), document.createTextNode(msg));
    error.hidden = false;
  }

  /** The address typed in the panel, or null after explaining what is wrong with it. */
  typedAddress(text) {
    if (!this.panel) return null;
    this.panel.error.hidden = true;
    try {
      return parseAddress(text);
    } catch (err) {
      this.showError(err.message);
      this.panel.input.focus();
      return null;
    }
  }

  async addPeer(text) {
    const addr = this.typedAddress(text);
    if (!addr) return;
    try {
      await api.post("/sync/peers", addr);
      this.panel.input.value = "";
      announce(`Peer ${addr.host}:${addr.port} added`);
      await this.load();
    } catch (err) {
      this.showError(err.message || String(err));
    }
  }

  /** Ask the engine at host:port which workspace it serves (GET /workspace/discover?host&port),
   * to join one where discovery does not reach. */
  async lookUp(text) {
    const addr = this.typedAddress(text);
    if (!addr) return;
    try {
      const q = new URLSearchParams({ host: addr.host, port: String(addr.port) });
      const r = await api.get(`/workspace/discover?${q}`);
      this.lookedUp = { address: r.address, workspaces: (r.workspaces || []).map(
        (w) => ({ ...w, host: addr.host, port: addr.port })) };
      if (!this.lookedUp.workspaces.length) {
        this.showError(`The engine at ${r.address} has no workspace to join yet.`);
      }
      this.renderPanel();
    } catch (err) {
      this.showError(err.message || String(err));
    }
  }

  async removePeer(p) {
    try {
      await api.del("/sync/peers", { host: p.host, port: p.port });
      announce(`Peer ${p.address} removed`);
      await this.load();
    } catch (err) {
      this.ctx.reportError(err, "Couldn't remove the peer");
    }
  }

  /** Join a discovered (or looked-up) workspace; resolves true once the engine opened it. */
  async join(w) {
    try {
      if (w.join === "key") {
        // the code is checked for shape by the engine (400 shown in the dialog); whether it
        // is right only shows when a member answers (4004, see joinRefused)
        if (!await joinWithCodeDialog(w)) return false;
        this.codeGiven.add(w.ws);
      } else {
        await api.post("/workspace/join", { id: w.ws, ...(w.name ? { name: w.name } : {}),
          ...(w.host ? { host: w.host, port: w.port } : {}) });
      }
      if (this.panel) this.panel.modal.close(null);
      toast(`Joining “${w.name}”… tables fill in as data arrives.`);
      return true;
    } catch (err) {
      this.ctx.reportError(err, "Couldn't join the workspace");
      return false;
    }
  }

  renderPanel() {
    if (!this.panel) return;
    const st = this.status;
    const { list, intro } = this.panel;
    if (!st) {
      intro.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
      return;
    }
    const ws = this.ctx.workspace() || {};
    const where = (st.addresses || []).map((a) => `${a}:${st.port}`);
    intro.replaceChildren(
      el("p", { class: "sync-summary", text: describe(st).text }),
      el("p", { class: "muted" },
        `Workspace “${ws.name || ""}” · ID fingerprint `,
        el("code", { text: fingerprint(st.genesis) || "…" }),
        ` · your key fingerprint `, el("code", { text: fingerprint(st.actor_id) })),
      el("p", { class: "muted" }, !st.port
        ? "This engine does not listen for peers (started without a sync port)."
        : st.discovery ? "Others on this network find this workspace automatically, or can " +
          "add this computer by address: "
          : "Discovery is off on this computer: others add it by address: ",
      ...where.flatMap((a, i) => [i ? ", " : "", el("code", { text: a })])),
      el("p", { class: "muted", text: "In this version everyone who joins can edit." }));
    if (st.joining && this.refused.has(st.workspace_id)) {
      const ws = st.workspace_id;
      intro.append(el("p", { class: "dialog-error join-refused", role: "alert" },
        el("span", { html: icon("error") }), this.refusedText(ws)),
        el("button", {
          class: "btn", type: "button", text: "Enter another code",
          onclick: async () => {
            // joining a workspace that is still arriving again reopens it with the new code
            if (!await joinWithCodeDialog({ ws, name: st.name || "this workspace" })) return;
            this.codeGiven.add(ws);
            this.refused.delete(ws);
            await this.refresh();
          },
        }));
    }

    const sections = [];
    const connected = (st.peers || []).filter((p) => p.state === "connected");
    const dialing = (st.peers || []).filter((p) => p.state !== "connected");
    const rows = [];
    for (const p of connected) {
      rows.push(this.peerRow(p.name || p.device || "Unknown device", p.peer_id,
        p.remaining ? `Connected · catching up, ${changesLeft(p.remaining)}` : "Connected",
        p.addr, "ok"));
    }
    for (const p of dialing) {
      const retry = p.retry_at_ms ? ` · retrying ${when(p.retry_at_ms)}` : "";
      rows.push(this.peerRow(p.peer_id ? "Peer" : p.addr, p.peer_id,
        p.state === "backoff" ? `Not reachable${retry}` : "Connecting…", p.addr, "warn"));
    }
    for (const p of st.last_seen || []) {
      rows.push(this.peerRow(p.name || "Unknown device", p.peer_id,
        `Last seen ${when(p.at_ms)}`, p.addr, ""));
    }
    sections.push(el("h3", { class: "label", text: "Peers" }));
    sections.push(rows.length ? el("ul", { class: "peer-list", "aria-label": "Peers" }, ...rows)
      : el("p", { class: "conflict-empty", text: "No peers yet. Teammates on this network " +
        "appear here once they open this workspace." }));

    const manual = st.manual_peers || [];
    if (manual.length) {
      sections.push(el("h3", { class: "label", text: "Added by address" }));
      const ul = el("ul", { class: "peer-list", "aria-label": "Peers added by address" });
      for (const p of manual) {
        const remove = el("button", {
          type: "button", class: "btn btn-danger-ghost btn-sm", text: "Remove",
          "aria-label": `Remove peer ${p.address}`,
        });
        remove.addEventListener("click", () => this.removePeer(p));
        ul.append(el("li", { class: "peer-item" },
          el("div", { class: "peer-main" },
            el("div", { class: "peer-title" }, el("span", { text: p.address }),
              el("span", { class: `tag ${p.state === "connected" ? "tag-ok" : ""}`,
                text: p.state === "connected" ? "Connected" : p.state === "backoff"
                  ? "Not reachable" : "Connecting…" }))),
          remove));
      }
      sections.push(ul);
    }

    const byAddress = this.lookedUp ? this.lookedUp.workspaces.filter((w) => !w.here) : [];
    const joinable = [...byAddress, ...this.discovered.filter((w) => !w.here)];
    if (joinable.length) {
      sections.push(el("h3", { class: "label", text: "Other workspaces on this network" }));
      const ul = el("ul", { class: "peer-list", "aria-label": "Workspaces on this network" });
      for (const w of joinable) {
        const b = el("button", { type: "button", class: "btn btn-secondary btn-sm", text: "Join",
          "aria-label": `Join ${w.name}` });
        const needsCode = w.join === "key";
        b.addEventListener("click", () => this.join(w));
        ul.append(el("li", { class: "peer-item" },
          el("div", { class: "peer-main" },
            el("div", { class: "peer-title" }, el("span", { text: w.name }),
              el("code", { text: w.gh.slice(0, 8), title: "Workspace fingerprint" }),
              needsCode ? el("span", { class: "tag tag-warn", text: "Access code needed" }) : ""),
            el("div", { class: "peer-meta", text: w.host ? `at ${w.host}:${w.port}`
              : `${w.peers_online} ${w.peers_online === 1 ? "peer" : "peers"} online` })),
          b));
      }
      sections.push(ul);
    }
    list.replaceChildren(...sections);
  }

  peerRow(name, peerId, stateText, addr, tone) {
    return el("li", { class: "peer-item" },
      el("span", { class: `sync-dot tone-${tone || "none"}`, "aria-hidden": "true" }),
      el("div", { class: "peer-main" },
        el("div", { class: "peer-title" }, el("span", { class: "peer-name", text: name }),
          peerId ? el("code", { class: "peer-fp", text: fingerprint(peerId),
            title: "Key fingerprint: compare it with the one on the peer's screen" }) : ""),
        el("div", { class: "peer-meta" }, el("span", { class: "peer-state", text: stateText }),
          addr ? ` · ${addr}` : "")));
  }
}
