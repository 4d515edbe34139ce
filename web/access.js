// Who may join a workspace, in the UI (spec 03 §2 join modes and recovery; spec 05 J2, J3):
// the Access section of the peers panel (join mode, access codes, the owner's fingerprint),
// the dialogs that ask for an access code when joining, create a workspace, recover ownership,
// and the one-time display of a recovery secret. The engine decides everything (who owns the
// workspace, whether a code is live); the UI shows its answers and sends the owner's choices.

import * as api from "./api.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal } from "./dialogs.js";
import { announce } from "./toast.js";

let uid = 0;

const MODES = {
  open: { label: "Open", text: "anyone on this network can join" },
  key: { label: "Access code", text: "people need a code you give them" },
};

const expiryFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** "7KQ2MX" → "7KQ-2MX": two groups of three, easier to read aloud and to type back. */
export function formatCode(code) {
  const c = String(code || "").replace(/[-\s]/g, "").toUpperCase();
  return c.length === 6 ? `${c.slice(0, 3)}-${c.slice(3)}` : c;
}

/** The key fingerprint people compare (as in the peers list): 8 hex digits of the actor id. */
function fp(actorHex) {
  return actorHex ? String(actorHex).slice(0, 8) : "";
}

/** Show `msg` (with an error icon) in `node`, or hide it when there is none. */
export function setError(node, msg) {
  if (!msg) {
    node.hidden = true;
    node.replaceChildren();
    return;
  }
  node.replaceChildren(el("span", { html: icon("error") }), document.createTextNode(msg));
  node.hidden = false;
}

/** What the person sees for an access key's state (never colour alone: a word in a tag). */
export function keyState(k, now = Date.now()) {
  if (k.revoked) return { text: "Revoked", tone: "" };
  if (k.live) return { text: "Live", tone: "tag-ok" };
  if (k.expires_ms && k.expires_ms <= now) return { text: "Expired", tone: "tag-warn" };
  if (k.max_uses && k.uses >= k.max_uses) return { text: "Used up", tone: "tag-warn" };
  return { text: "Not live", tone: "tag-warn" };
}

// --- dialogs --------------------------------------------------------------------------------

/**
 * Show a recovery secret once (spec 03 §2 Create, Recovery): Copy, and "I have saved it".
 * Resolves when the dialog is closed.
 */
export function showRecoverySecret(secret, { title = "Recovery key" } = {}) {
  const n = ++uid;
  const copied = el("p", { class: "muted help", role: "status", "aria-live": "polite" });
  const copy = el("button", { type: "button", class: "btn btn-secondary btn-sm", text: "Copy" });
  const m = modal({
    title,
    cls: "recovery-dialog",
    body: [
      el("p", { id: `rk-help-${n}`, class: "confirm-text",
        text: "Keep this recovery key somewhere safe. Whoever has it can take ownership of " +
          "the workspace." }),
      el("div", { class: "recovery-row" },
        el("code", { class: "recovery-secret", "aria-label": "Recovery key",
          "aria-describedby": `rk-help-${n}`, text: secret }),
        copy),
      copied,
      el("p", { class: "muted help", text: "It is shown only now. A copy is kept on this " +
        "computer for you, but keep your own: you need it if this computer is lost." }),
    ],
    actions: [{ label: "I have saved it", kind: "btn-primary", run: (close) => close(true) }],
  });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      copied.textContent = "Copied to the clipboard.";
    } catch {
      // no clipboard permission (e.g. not a secure context): select it for Ctrl+C instead
      const range = document.createRange();
      range.selectNodeContents(m.body.querySelector(".recovery-secret"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      copied.textContent = "Selected: press Ctrl+C (⌘C) to copy it.";
    }
  });
  m.foot.lastChild.focus();
  return m.done;
}

/**
 * A dialog with one text field whose submit calls `run(value)`; a refusal (an ApiError or
 * Error) is shown under the field and the dialog stays open. Resolves with run's answer, or
 * null when cancelled.
 */
function formDialog({ title, label, placeholder = "", help = "", submitLabel, busyLabel,
  run, inputCls = "", explain = (err) => err.message || String(err) }) {
  const n = ++uid;
  const input = el("input", {
    id: `fd-${n}`, class: `input ${inputCls}`, type: "text", autocomplete: "off",
    spellcheck: "false", placeholder, "aria-describedby": help ? `fd-help-${n}` : null,
  });
  const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
  const m = modal({
    title,
    body: [el("label", { class: "label", for: `fd-${n}`, text: label }), input,
      help ? el("p", { id: `fd-help-${n}`, class: "muted help", text: help }) : "", error],
    actions: [{ label: "Cancel" }, { label: submitLabel, kind: "btn-primary", type: "submit" }],
  });
  const submit = m.foot.lastChild;
  m.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setError(error, "");
    const v = input.value.trim();
    if (!v) {
      setError(error, `${label} is required.`);
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = busyLabel;
    try {
      m.close(await run(v));
    } catch (err) {
      setError(error, explain(err));
      submit.disabled = false;
      submit.textContent = submitLabel;
      input.focus();
    }
  });
  input.focus();
  return m.done;
}

/** Ask for the access code of a workspace in access-code mode and join it (spec 03 §2);
 * resolves with POST /workspace/join's answer, or null. */
export function joinWithCodeDialog(w) {
  return formDialog({
    title: `Join “${w.name}”`, label: "Access code", placeholder: "ABC-123",
    inputCls: "input-code",
    help: "This workspace needs an access code: ask its owner for one. It is 6 letters and " +
      "digits; the dash is optional.",
    submitLabel: "Join", busyLabel: "Joining…",
    // joined by address (a `list` lookup): that engine is also added as a peer
    run: (code) => api.post("/workspace/join", { id: w.ws, code, ...(w.host
      ? { host: w.host, port: w.port } : {}) }),
    explain: (err) => err.status === 400 && err.details && err.details.field === "code"
      ? `That is not an access code: ${err.message}.` : err.message || String(err),
  });
}

/** Paste the recovery key and become the owner (spec 03 §2 Recovery); resolves with POST
 * /workspace/recover's answer (the new secret), or null. */
export function recoverDialog() {
  return formDialog({
    title: "Recover ownership", label: "Recovery key",
    placeholder: "XXXX-XXXX-XXXX-…", inputCls: "input-code",
    help: "Paste the workspace's current recovery key (52 letters and digits). You become the " +
      "owner, and a new recovery key replaces it.",
    submitLabel: "Recover ownership", busyLabel: "Recovering…",
    run: (secret) => api.post("/workspace/recover", { secret }),
    explain: (err) => err.status === 400
      ? "That recovery key is wrong or no longer current: only the latest key works." +
        (err.details && err.details.field === "secret" ? ` (${err.message})` : "")
      : err.message || String(err),
  });
}

// --- the Access section of the peers panel ----------------------------------------------------

/**
 * Built once per open panel, so what the owner types (expiry, uses) survives the panel's
 * re-renders on sync events; `update()` refreshes the parts that come from the engine.
 * @param {object} ctx reportError(err, what), names() → Map actor hex → display name,
 *   changed() (re-query the panel after a change)
 */
export class AccessSection {
  constructor(ctx) {
    this.ctx = ctx;
    this.lifecycle = null;
    this.keys = [];
    this.fresh = null; // the code just created, shown large until the panel closes
    const n = ++uid;
    this.root = el("section", { class: "access", "aria-labelledby": `acc-h-${n}`, hidden: true },
      el("h3", { class: "label", id: `acc-h-${n}`, text: "Access" }));
    this.summary = el("div", { class: "access-summary" });

    // owner: the join mode as a two-choice radio group
    this.modeGroup = el("fieldset", { class: "access-modes" },
      el("legend", { class: "sr-only", text: "Who can join" }));
    this.radios = {};
    for (const [mode, d] of Object.entries(MODES)) {
      const r = el("input", { type: "radio", name: `join-mode-${n}`, value: mode });
      r.addEventListener("change", () => { if (r.checked) this.setMode(mode); });
      this.radios[mode] = r;
      this.modeGroup.append(el("label", { class: "access-mode" }, r,
        el("span", {}, el("strong", { text: d.label }), ` — ${d.text}`)));
    }
    this.modeError = el("p", { class: "dialog-error", role: "alert", hidden: true });

    // owner: new access code
    this.hours = el("input", { id: `acc-hours-${n}`, class: "input input-num", type: "number",
      min: "1", step: "1", inputmode: "numeric", placeholder: "never" });
    this.uses = el("input", { id: `acc-uses-${n}`, class: "input input-num", type: "number",
      min: "1", step: "1", inputmode: "numeric", placeholder: "any" });
    this.createBtn = el("button", { type: "submit", class: "btn btn-primary",
      text: "New access code" });
    this.keyError = el("p", { class: "dialog-error", role: "alert", hidden: true });
    this.freshBox = el("div", { class: "access-fresh", "aria-live": "polite" });
    this.keyForm = el("form", { class: "access-new", novalidate: true },
      el("div", { class: "access-new-row" },
        el("div", {}, el("label", { class: "label", for: `acc-hours-${n}`,
          text: "Expires after (hours)" }), this.hours),
        el("div", {}, el("label", { class: "label", for: `acc-uses-${n}`, text: "Max uses" }),
          this.uses),
        this.createBtn),
      this.keyError);
    this.keyForm.addEventListener("submit", (e) => {
      e.preventDefault();
      this.createKey().catch(() => {});
    });
    this.keyList = el("div", { class: "access-keys" });
    this.owner = el("div", { class: "access-owner" }, this.modeGroup, this.modeError,
      this.keyForm, this.freshBox, this.keyList);

    // everyone else: recover ownership
    this.recoverBtn = el("button", { type: "button", class: "btn btn-secondary btn-sm",
      text: "Recover ownership…" });
    this.recoverBtn.addEventListener("click", () => this.recover());
    this.member = el("div", { class: "access-member" }, this.recoverBtn);
    this.root.append(this.summary, this.owner, this.member);
  }

  /** Re-ask the engine: GET /workspace/lifecycle, and the keys when this device owns it. */
  async load() {
    try {
      this.lifecycle = await api.get("/workspace/lifecycle");
    } catch {
      this.lifecycle = null; // e.g. still joining: there is no owner to show yet
    }
    this.keys = [];
    if (this.lifecycle && this.lifecycle.is_owner) {
      this.keys = (await api.get("/access-keys/list")).keys || [];
    }
  }

  render() {
    const lc = this.lifecycle;
    this.root.hidden = !lc || !lc.owner;
    if (this.root.hidden) return;
    const mode = MODES[lc.join_mode] || { label: lc.join_mode, text: "" };
    const modeLine = el("p", { class: "access-mode-line" }, "Join mode: ",
      el("strong", { text: mode.label }), mode.text ? ` — ${mode.text}` : "");
    if (lc.is_owner) {
      this.summary.replaceChildren(el("p", { class: "access-owner-line" },
        "You own this workspace: you decide who can join."), modeLine);
      for (const [m, r] of Object.entries(this.radios)) r.checked = lc.join_mode === m;
    } else {
      const name = this.ctx.names().get(lc.owner);
      this.summary.replaceChildren(
        el("p", { class: "access-owner-line" }, "Owner: ",
          name ? `${name} · ` : "", "key fingerprint ",
          el("code", { class: "owner-fp", text: fp(lc.owner) })),
        modeLine);
    }
    this.owner.hidden = !lc.is_owner;
    this.member.hidden = lc.is_owner;
    this.keyForm.hidden = false;
    this.renderFresh();
    this.renderKeys();
  }

  renderFresh() {
    const f = this.fresh;
    if (!f) {
      this.freshBox.replaceChildren();
      return;
    }
    const k = this.keys.find((x) => x.key_id === f.key_id);
    const gone = k && !k.live;
    this.freshBox.replaceChildren(el("div", { class: "access-code-card" },
      el("p", { class: "muted", text: gone ? "This code no longer works:"
        : "Read this code to the person joining; they type it when they press Join:" }),
      el("p", { class: `access-code-big${gone ? " is-dead" : ""}`, "aria-label":
        `Access code ${[...f.code].join(" ")}`, text: formatCode(f.code) }),
      el("p", { class: "muted", text: [
        f.expires_ms ? `Expires ${expiryFmt.format(new Date(f.expires_ms))}` : "Never expires",
        f.max_uses ? `${f.max_uses} ${f.max_uses === 1 ? "use" : "uses"}` : "any number of uses",
      ].join(" · ") })));
  }

  renderKeys() {
    if (!this.keys.length) {
      this.keyList.replaceChildren(el("p", { class: "conflict-empty", text: "No access codes " +
        "yet." }));
      return;
    }
    const ul = el("ul", { class: "peer-list", "aria-label": "Access codes" });
    for (const k of [...this.keys].reverse()) { // newest first (key ids are UUIDv7)
      const st = keyState(k);
      const shown = formatCode(k.code);
      const meta = [
        `${k.uses} ${k.uses === 1 ? "use" : "uses"}${k.max_uses ? ` of ${k.max_uses}` : ""}`,
        k.expires_ms ? `${k.expires_ms > Date.now() ? "expires" : "expired"} ` +
          expiryFmt.format(new Date(k.expires_ms)) : "never expires",
      ].join(" · ");
      const li = el("li", { class: "peer-item access-key", "data-key-id": k.key_id },
        el("div", { class: "peer-main" },
          el("div", { class: "peer-title" }, el("code", { class: "key-code", text: shown }),
            el("span", { class: `tag key-state ${st.tone}`, text: st.text })),
          el("div", { class: "peer-meta", text: meta })));
      if (!k.revoked) {
        const b = el("button", { type: "button", class: "btn btn-danger-ghost btn-sm",
          text: "Revoke", "aria-label": `Revoke access code ${shown}` });
        b.addEventListener("click", () => this.revoke(k, shown));
        li.append(b);
      }
      ul.append(li);
    }
    this.keyList.replaceChildren(ul);
  }

  async setMode(mode) {
    setError(this.modeError, "");
    try {
      await api.post("/workspace/join-mode", { mode });
      announce(mode === "key" ? "Joining now needs an access code" : "Anyone on this network " +
        "can join");
    } catch (err) {
      setError(this.modeError, `Couldn't change the join mode: ${err.message || err}`);
    }
    await this.ctx.changed();
  }

  /** A positive whole number from an optional field, or undefined; throws a person's message. */
  static count(input, what) {
    const t = input.value.trim();
    if (!t) return undefined;
    const v = Number(t);
    if (!Number.isInteger(v) || v < 1) throw new Error(`${what} must be a whole number of at ` +
      "least 1, or empty.");
    return v;
  }

  async createKey() {
    setError(this.keyError, "");
    const body = {};
    try {
      const h = AccessSection.count(this.hours, "Expires after (hours)");
      const u = AccessSection.count(this.uses, "Max uses");
      if (h !== undefined) body.expires_in_s = h * 3600;
      if (u !== undefined) body.max_uses = u;
    } catch (err) {
      setError(this.keyError, err.message);
      return;
    }
    this.createBtn.disabled = true;
    try {
      const r = await api.post("/access-keys/create", body);
      this.fresh = { key_id: r.key_id, code: r.code, expires_ms: r.expires_ms,
        max_uses: r.max_uses };
      this.hours.value = "";
      this.uses.value = "";
      announce(`New access code ${[...r.code].join(" ")}`);
    } catch (err) {
      setError(this.keyError, `Couldn't create an access code: ${err.message || err}`);
    } finally {
      this.createBtn.disabled = false;
    }
    await this.ctx.changed();
  }

  async revoke(k, shown) {
    try {
      await api.post("/access-keys/revoke", { key_id: k.key_id });
      announce(`Access code ${shown} revoked`);
    } catch (err) {
      this.ctx.reportError(err, "Couldn't revoke the access code");
    }
    await this.ctx.changed();
  }

  async recover() {
    const r = await recoverDialog();
    if (!r) return;
    await showRecoverySecret(r.recovery_secret, { title: "You own this workspace now" });
    await this.ctx.changed();
  }
}
