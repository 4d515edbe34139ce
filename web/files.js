// File fields in the grid (spec 05 J9): empty cells take a dropped or picked file, uploads show
// their own progress, filled cells show a thumbnail (images, PDFs) or an icon and the file's
// name, and a preview dialog opens on click. A teammate's file that is not on this device yet
// reads "Downloading from Alex… 40%" or "Not on this device yet".
//
// The engine does the work (spec 05 §1): `POST /blobs/upload` stores the bytes, `POST
// /records/update` attaches the hash (one undo step), `GET /blobs/<hash>/info` names the file,
// and a GET of a file that is not here (202) makes the engine fetch it from a peer. The
// `blob_fetch_progress`, `blob_available` and `blob_fetch_failed` events then say how it goes;
// the UI only remembers what the engine last said about each hash, and re-asks after a
// reconnect.

import * as api from "./api.js";
import { modal } from "./dialogs.js";
import { el } from "./dom.js";
import { rememberFileName } from "./format.js";
import { icon } from "./icons.js";
import { announce } from "./toast.js";

// types the engine makes a thumbnail of (openprod/engine/thumbnails.py)
const THUMBNAILED = /^(image\/(png|jpeg|gif|webp|bmp|tiff)|application\/pdf)$/;
// types the preview shows inline (the engine sends them `inline`; TIFF no browser shows)
const INLINE_IMAGE = /^image\/(png|jpeg|gif|webp|avif|bmp)$/;
const EVENTS = new Set(["blob_fetch_progress", "blob_available", "blob_fetch_failed"]);

const blobUrl = (h, suffix = "") => `/blobs/${encodeURIComponent(h)}${suffix}`;

/** "1.4 MB" style sizes (decimal units, as file managers show them). */
export function formatSize(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "unknown size";
  if (n < 1000) return n === 1 ? "1 byte" : `${n} bytes`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n;
  let u = -1;
  do {
    v /= 1000;
    u += 1;
  } while (v >= 1000 && u < units.length - 1);
  return `${v >= 100 ? Math.round(v) : v.toFixed(1).replace(/\.0$/, "")} ${units[u]}`;
}

const percent = (done, total) => (total > 0 ? Math.min(100, Math.floor((done / total) * 100))
  : null);

/** A refused upload in plain words (the engine's message when there is no better one). */
function uploadError(file, status, data) {
  const e = (data && data.error) || {};
  const d = e.details || {};
  if (e.code === "blob_too_large" || status === 413) {
    const limit = typeof d.limit === "number" ? ` (at most ${formatSize(d.limit)})` : "";
    return `“${file.name}” is too large to attach${limit}.`;
  }
  if (status === 401) return "this page is no longer signed in; open the link printed by " +
    "`openprod serve` again.";
  if (status === 0) return "can't reach the engine. Is `openprod serve` still running?";
  return e.message || `the engine answered ${status}.`;
}

export class Files {
  /**
   * @param {object} ctx
   *   attach(id, field, hash): write the hash to the cell (the grid's ordinary edit, one undo
   *     step, with its pending display and inline error)
   *   fail(id, field, message): show a refused upload inline on the cell
   *   rerender(id, field): draw one cell again;  refresh(hash|null): draw the cells showing hash
   *   recordName(id): a person-readable name;  peerName(actorId): display name or null
   *   focusGrid(): put the focus back on the grid's active cell
   */
  constructor(ctx) {
    this.ctx = ctx;
    this.blobs = new Map(); // hash -> what the engine last said (see entry())
    this.uploads = new Map(); // "id|field" -> {name, loaded, total, xhr}
    this.views = new Set(); // open previews' render functions
    this.frame = null;
    this.dirty = new Set();
    this.picker = el("input", { type: "file", hidden: true, "aria-hidden": "true",
      tabindex: "-1", class: "file-picker" });
    document.body.append(this.picker);
    // a file dropped anywhere but on a file cell must not make the browser leave the app
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (e) => {
        if (e.defaultPrevented || !hasFiles(e)) return;
        e.preventDefault();
        e.dataTransfer.dropEffect = "none";
      });
    }
  }

  // --- what the engine said about each file -----------------------------------------------

  /**
   * The entry of hash h: {info: {name, mime, size}|null, state, received, size, peer, reason,
   * asked, noThumb}. state: loading | present | remote (a teammate's, not requested) |
   * fetching | missing (requested; no connected peer has it) | failed | unavailable.
   */
  entry(h) {
    let e = this.blobs.get(h);
    if (!e) {
      e = { info: null, state: "loading", received: 0, size: null, peer: null, reason: "",
        asked: false, noThumb: false };
      this.blobs.set(h, e);
      this.load(h, e);
    }
    return e;
  }

  async load(h, e) {
    try {
      const info = await api.get(blobUrl(h, "/info"));
      if (this.blobs.get(h) !== e) return;
      e.info = { name: info.name, mime: info.mime, size: info.size };
      e.size = e.size ?? info.size;
      rememberFileName(h, info.name);
      if (e.state === "loading") {
        e.state = { present: "present", fetching: "fetching", corrupt: "failed" }[info.state] ||
          "remote";
        if (info.state === "corrupt") e.reason = "the copy on this device is damaged";
      }
      // an image or PDF is wanted as soon as it is shown (its thumbnail needs the bytes)
      if (e.state !== "present" && THUMBNAILED.test(e.info.mime || "")) this.ask(h);
    } catch (err) {
      if (this.blobs.get(h) !== e) return;
      if (err.status === 404) e.state = "unavailable";
      else if (err.code !== "unauthorized") {
        this.blobs.delete(h); // try again next time it is drawn
        return;
      }
    }
    this.changed(h);
  }

  /** GET the file's thumbnail: for a file not here the engine answers 202 and fetches it. */
  async ask(h) {
    const e = this.entry(h);
    if (e.asked || e.state === "present") return;
    e.asked = true;
    let resp;
    let data = null;
    try {
      resp = await fetch(blobUrl(h, "/thumbnail"), { credentials: "same-origin",
        headers: { Accept: "application/json, image/png" } });
      if (resp.status !== 200) data = await resp.json().catch(() => null);
    } catch {
      e.asked = false;
      return;
    }
    if (this.blobs.get(h) !== e || e.state === "present") return;
    if (resp.status === 200) {
      e.state = "present";
    } else if (resp.status === 202) {
      // an event may already have said more (progress, or failed): keep the newer news
      if (data && data.state === "fetching" && e.state !== "failed" && e.state !== "missing") {
        e.state = "fetching";
      } else if (data && data.state === "missing" && e.state !== "fetching") {
        e.state = "missing";
      }
      if (data && typeof data.size === "number") e.size = data.size;
    } else if (data && data.error && data.error.code === "no_thumbnail") {
      e.state = "present";
      e.noThumb = true;
    } else if (resp.status === 404) {
      e.state = "unavailable";
    } else {
      e.asked = false;
      return;
    }
    this.changed(h);
  }

  /** blob_fetch_progress / blob_available / blob_fetch_failed → true when handled. */
  onEvent(ev) {
    if (!EVENTS.has(ev.type)) return false;
    const h = ev.hash;
    const e = this.blobs.get(h);
    if (!e) return true; // not on screen: it is asked about when it is
    if (ev.type === "blob_available") {
      e.state = "present";
      e.received = e.size ?? e.received;
    } else if (e.state !== "present") {
      if (ev.type === "blob_fetch_progress") {
        e.state = "fetching";
        e.received = ev.received || 0;
        if (typeof ev.size === "number") e.size = ev.size;
        e.peer = ev.peer_id || null;
      } else {
        e.state = ev.retry ? "missing" : "failed";
        e.reason = ev.reason || "";
        e.asked = !!ev.retry; // the engine retries by itself; a failure may be asked again
      }
    }
    this.changed(h);
    return true;
  }

  /** After a reconnect: forget everything and ask again for what is on screen. */
  reset() {
    this.blobs.clear();
    this.ctx.refresh(null);
  }

  changed(h) {
    this.dirty.add(h);
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      const hashes = [...this.dirty];
      this.dirty.clear();
      for (const x of hashes) this.ctx.refresh(x);
      for (const render of this.views) render();
    });
  }

  // --- cells ------------------------------------------------------------------------------

  /** The content of a file cell: an upload in progress, a drop target, or the file. */
  cell(f, v, k, recordName) {
    const up = this.uploads.get(k);
    if (up) return this.uploadNode(f, up, recordName);
    if (v === null || v === undefined || v === "") {
      return el("div", { class: "file-cell file-empty" },
        el("span", { class: "file-drop-hint", text: "Drop a file" }),
        el("button", {
          type: "button", tabindex: "-1", class: "file-attach",
          "aria-label": `Attach a file to ${f.label} of ${recordName}`,
          title: "Choose a file to attach (or drop one on the cell)",
        }, el("span", { html: icon("paperclip") }), el("span", { text: "Attach…" })));
    }
    const e = this.entry(v);
    const name = e.info ? e.info.name : "";
    const open = el("button", {
      type: "button", tabindex: "-1", class: `file-open file-${e.state}`, "data-hash": v,
      "aria-label": `Open ${f.label} of ${recordName}: ${name || "file"}` +
        (e.state === "present" || e.state === "loading" ? "" : ` (${this.statusText(e)})`),
      title: [name, e.info ? formatSize(e.info.size) : "", e.state === "present"
        ? "Click to open" : this.statusText(e)].filter(Boolean).join(" · "),
    });
    if (e.state === "loading") {
      open.append(el("span", { class: "file-name muted", text: "…" }));
      return open;
    }
    if (e.state === "present" && !e.noThumb && THUMBNAILED.test(e.info?.mime || "")) {
      const img = el("img", { class: "file-thumb", src: blobUrl(v, "/thumbnail"), alt: "",
        loading: "lazy", decoding: "async" });
      img.addEventListener("error", () => {
        e.noThumb = true; // a file that does not decode: the icon instead
        this.changed(v);
      }, { once: true });
      open.append(img);
    } else {
      open.append(el("span", { class: "file-icon", html: icon("file") }));
    }
    const text = el("span", { class: "file-text" },
      el("span", { class: "file-name", text: name || "File" }));
    if (e.state !== "present" && e.state !== "remote") {
      text.append(el("span", { class: "file-status", text: this.statusText(e) }));
      if (e.state === "fetching") open.append(this.bar(e.received, e.size));
    }
    open.append(text);
    return open;
  }

  uploadNode(f, up, recordName) {
    const pct = percent(up.loaded, up.total);
    return el("div", { class: "file-cell file-uploading", role: "status" },
      el("span", { class: "file-text" },
        el("span", { class: "file-name", text: up.name }),
        el("span", { class: "file-status", text: `Uploading… ${pct ?? 0}%` })),
      this.bar(up.loaded, up.total, `Uploading ${up.name}`),
      el("button", {
        type: "button", tabindex: "-1", class: "icon-btn file-cancel",
        "aria-label": `Cancel the upload of ${up.name} to ${f.label} of ${recordName}`,
        title: "Cancel the upload", html: icon("close"),
      }));
  }

  bar(done, total, label = "Downloading") {
    const p = el("progress", { class: "file-progress", max: "100", "aria-label": label });
    const pct = percent(done, total);
    if (pct !== null) p.value = pct; // else indeterminate
    return p;
  }

  statusText(e) {
    switch (e.state) {
      case "fetching": {
        const who = (e.peer && this.ctx.peerName(e.peer)) || "peer";
        const pct = e.received ? percent(e.received, e.size) : null;
        return `Downloading from ${who}…${pct === null ? "" : ` ${pct}%`}`;
      }
      case "missing": return "Not on this device yet";
      case "remote": return "Not on this device yet: opening it downloads it from a teammate";
      case "failed": return `Couldn't download${e.reason ? `: ${e.reason}` : ""}`;
      case "unavailable": return "This file is not available here";
      default: return "";
    }
  }

  // --- uploading --------------------------------------------------------------------------

  /** Open the file picker for a cell (the Attach… button, or Enter on an empty file cell). */
  pick(id, f) {
    const input = this.picker;
    input.value = "";
    input.onchange = () => {
      const file = input.files && input.files[0];
      input.onchange = null;
      if (file) this.upload(id, f, file);
    };
    input.click();
  }

  /** Upload one file into a cell, with progress, then attach it (one undo step). */
  upload(id, f, file) {
    const k = `${id}|${f.name}`;
    this.uploads.get(k)?.xhr.abort();
    const xhr = new XMLHttpRequest();
    const up = { name: file.name || "file", loaded: 0, total: file.size, xhr };
    this.uploads.set(k, up);
    const done = () => {
      if (this.uploads.get(k) !== up) return false;
      this.uploads.delete(k);
      return true;
    };
    let frame = null;
    xhr.upload.addEventListener("progress", (e) => {
      up.loaded = e.loaded;
      if (e.lengthComputable) up.total = e.total;
      if (frame) return;
      frame = requestAnimationFrame(() => {
        frame = null;
        if (this.uploads.get(k) === up) this.ctx.rerender(id, f);
      });
    });
    xhr.addEventListener("load", () => {
      if (!done()) return;
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status !== 200 || !data || typeof data.hash !== "string") {
        this.ctx.fail(id, f, uploadError(file, xhr.status, data));
        return;
      }
      // the file is here now: its entry needs no question to the engine
      const e = this.blobs.get(data.hash);
      const info = { name: data.name, mime: data.mime, size: data.size };
      rememberFileName(data.hash, data.name);
      if (e) Object.assign(e, { info, state: "present", size: data.size });
      else {
        this.blobs.set(data.hash, { info, state: "present", received: data.size,
          size: data.size, peer: null, reason: "", asked: true, noThumb: false });
      }
      announce(`Uploaded ${up.name}`);
      this.ctx.attach(id, f, data.hash);
    });
    xhr.addEventListener("error", () => {
      if (done()) this.ctx.fail(id, f, uploadError(file, 0, null));
    });
    xhr.addEventListener("abort", () => {
      if (!done()) return;
      this.ctx.rerender(id, f);
      announce(`Upload of ${up.name} cancelled`);
    });
    xhr.open("POST", `/blobs/upload?name=${encodeURIComponent(up.name)}`);
    // the session cookie authenticates it, as for api.js's fetch calls (same origin)
    xhr.withCredentials = true;
    xhr.setRequestHeader("Accept", "application/json");
    if (file.type) xhr.setRequestHeader("Content-Type", file.type);
    xhr.send(file);
    this.ctx.rerender(id, f);
    announce(`Uploading ${up.name}`);
  }

  cancel(k) {
    this.uploads.get(k)?.xhr.abort();
  }

  // --- the preview ------------------------------------------------------------------------

  /** The preview dialog of the file in a cell: the image or PDF, or its details. */
  open(h, f, recordName) {
    const e = this.entry(h);
    if (e.state !== "present") this.ask(h); // opening a file is wanting it
    let shown = null; // what the body shows now, so a re-render keeps a loaded image
    const m = modal({
      title: e.info?.name || "File", wide: true, cls: "file-preview",
      actions: [{ label: "Close" }],
    });
    const render = () => {
      const cur = this.blobs.get(h) || this.entry(h);
      const info = cur.info || { name: "File", mime: "", size: cur.size };
      const key = `${cur.state}|${info.name}|${cur.state === "fetching" ? cur.received : ""}`;
      if (key === shown) return;
      shown = key;
      m.dlg.querySelector(".dialog-head h2").textContent = info.name || "File";
      const facts = el("dl", { class: "file-facts" },
        el("dt", { text: "Name" }), el("dd", { text: info.name || "—" }),
        el("dt", { text: "Size" }), el("dd", { text: formatSize(info.size ?? cur.size) }),
        el("dt", { text: "Type" }), el("dd", { text: info.mime || "unknown" }),
        el("dt", { text: "In" }), el("dd", { text: `${f.label} of ${recordName}` }));
      const body = [];
      if (cur.state === "present") {
        if (INLINE_IMAGE.test(info.mime || "")) {
          body.push(el("div", { class: "file-preview-frame" },
            el("img", { class: "file-preview-img", src: blobUrl(h), alt: info.name })));
        } else if (info.mime === "application/pdf") {
          body.push(el("iframe", { class: "file-preview-pdf", src: blobUrl(h),
            title: info.name }));
        } else if (THUMBNAILED.test(info.mime || "") && !cur.noThumb) {
          body.push(el("div", { class: "file-preview-frame" },
            el("img", { class: "file-preview-img", src: blobUrl(h, "/thumbnail"),
              alt: info.name })));
        }
        body.push(facts, el("p", { class: "file-preview-actions" },
          el("a", { class: "btn btn-secondary btn-sm", href: blobUrl(h, "?download=1"),
            download: info.name || "" },
          el("span", { html: icon("download") }), el("span", { text: "Download" }))));
      } else {
        const status = el("p", { class: `file-preview-status file-${cur.state}`,
          role: "status" }, el("span", { html: icon(cur.state === "failed"
          || cur.state === "unavailable" ? "warning" : "file") }),
        el("span", { text: cur.state === "loading" ? "Loading…" : cur.state === "missing"
          ? "Not on this device yet. It downloads as soon as a teammate who has it is online."
          : this.statusText(cur) }));
        body.push(status);
        if (cur.state === "fetching") body.push(this.bar(cur.received, cur.size));
        body.push(facts);
      }
      m.body.replaceChildren(...body);
    };
    this.views.add(render);
    render();
    m.done.then(() => {
      this.views.delete(render);
      this.ctx.focusGrid();
    });
    return m;
  }
}

/** Whether a drag carries files (not text or a link). */
export function hasFiles(e) {
  return !!e.dataTransfer && [...(e.dataTransfer.types || [])].includes("Files");
}
