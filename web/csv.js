// CSV import and export (spec 05 §4). Import: pick or drop a file, watch it upload, confirm
// which column goes to which field, Check (the rows with errors, by spreadsheet row number),
// then Import: the valid rows land in a new overlay "Import <file>", which becomes the active
// staging session (the staging banner offers Review / Commit / Discard). Export: the current
// view (its records, in order, with its columns) or the whole table, downloaded as a file.
// The engine does the conversions; this module shows what /import/csv/* answers.

import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal, confirmDialog } from "./dialogs.js";
import { typeName } from "./format.js";

const ERRORS_SHOWN = 100;
const nf = new Intl.NumberFormat();
const num = (n) => nf.format(n);
const rows = (n) => (n === 1 ? "1 row" : `${num(n)} rows`);
const DELIMS = { comma: "comma-separated", semicolon: "semicolon-separated",
  tab: "tab-separated" };

/** The file name of a Content-Disposition header (RFC 6266), or null. */
function dispositionName(header) {
  if (!header) return null;
  const star = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (star) {
    try {
      return decodeURIComponent(star[1]);
    } catch {
      // fall through to the plain name
    }
  }
  const plain = /filename="([^"]*)"/i.exec(header);
  return plain ? plain[1] : null;
}

/** A message from an engine error answer (JSON {error: {message}}), or a fallback. */
function errorText(status, text, fallback) {
  try {
    const data = JSON.parse(text);
    if (data && data.error && data.error.message) return data.error.message;
  } catch {
    // not JSON
  }
  return status ? `${fallback} (the engine answered ${status})` : fallback;
}

/**
 * @param {object} ctx {api, toast, announce, tableId(), table(), visibleIds(), columns(),
 *   staging} — staging: the Staging panel ({active: {id, name} | null, refresh()}).
 */
export class Csv {
  constructor(ctx) {
    this.ctx = ctx;
    this.job = null; // the import dialog's state while it is open
  }

  // --- events -----------------------------------------------------------------------------

  /** import_progress → true when handled. */
  onEvent(ev) {
    if (ev.type !== "import_progress") return false;
    const job = this.job;
    if (job && job.upload && ev.import_id === job.upload.upload_id && job.onProgress) {
      job.onProgress(ev);
    }
    return true;
  }

  // --- import -----------------------------------------------------------------------------

  openImport() {
    const table = this.ctx.table();
    if (!table) return null;
    if (this.job) {
      this.job.m.dlg.focus();
      return this.job.done;
    }
    const id = `csv-${Date.now().toString(36)}`;
    const file = el("input", { type: "file", accept: ".csv,.tsv,.txt,text/csv,text/plain",
      class: "csv-file-input", id: `${id}-file`, hidden: true });
    const pick = el("button", { type: "button", class: "btn btn-secondary", id: `${id}-pick` },
      el("span", { html: icon("file") }), "Choose a CSV file…");
    const drop = el("div", { class: "csv-drop" },
      el("span", { class: "csv-drop-icon", html: icon("download") }),
      el("p", { class: "csv-drop-text", text: "Drop a CSV file here" }),
      el("p", { class: "muted", text: "or" }), pick, file,
      el("p", { class: "muted help", text: "The first row must name the columns. Excel files: " +
        "use File › Save As › CSV. Nothing changes until you review and commit the import." }));
    const status = el("div", { class: "csv-status", role: "status", "aria-live": "polite" });
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const main = el("div", { class: "csv-main" }, drop);
    const check = el("button", { type: "button", class: "btn btn-secondary", text: "Check",
      id: `${id}-check`, disabled: true });
    const go = el("button", { type: "button", class: "btn btn-primary", text: "Import",
      id: `${id}-import`, disabled: true });
    const cancel = el("button", { type: "button", class: "btn btn-secondary", text: "Cancel" });
    const m = modal({ title: `Import a CSV file into ${table.label}`, wide: true,
      cls: "csv-dialog", body: [main, status, error] });
    m.foot.hidden = false;
    m.foot.append(cancel, check, go);
    const job = { m, table, upload: null, mapping: {}, checked: null, busy: false,
      imported: null, onProgress: null, xhr: null, done: m.done };
    this.job = job;

    const showError = (msg) => {
      error.replaceChildren(el("span", { html: icon("error") }), document.createTextNode(msg));
      error.hidden = !msg;
    };
    const setStatus = (...nodes) => status.replaceChildren(...nodes);

    const progressBar = (label, value, max) => {
      const bar = el("progress", { class: "csv-progress", max: String(max || 1),
        value: String(value || 0), "aria-label": label });
      return bar;
    };

    // --- step 1: the file ---
    const upload = (f) => {
      if (!f || job.busy) return;
      showError("");
      job.busy = true;
      const label = `Uploading ${f.name}`;
      const bar = progressBar(label, 0, f.size || 1);
      const text = el("p", { class: "csv-progress-text", text: `${label}… 0%` });
      setStatus(text, bar);
      pick.disabled = true;
      const xhr = new XMLHttpRequest();
      job.xhr = xhr;
      const q = new URLSearchParams({ table: table.id, name: f.name || "import.csv" });
      xhr.open("POST", `/import/csv/upload?${q}`);
      xhr.setRequestHeader("Content-Type", "text/csv");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        bar.max = e.total;
        bar.value = e.loaded;
        text.textContent = `${label}… ${Math.floor((e.loaded / e.total) * 100)}%`;
      });
      xhr.addEventListener("load", () => {
        job.busy = false;
        job.xhr = null;
        pick.disabled = false;
        if (xhr.status !== 200) {
          setStatus();
          showError(errorText(xhr.status, xhr.responseText, `Couldn't upload ${f.name}`));
          return;
        }
        let data;
        try {
          data = JSON.parse(xhr.responseText);
        } catch {
          showError(`Couldn't read the engine's answer about ${f.name}`);
          return;
        }
        this.discard(job); // an earlier upload in this dialog
        job.upload = data;
        job.mapping = { ...data.mapping };
        setStatus();
        this.ctx.announce(`${f.name} uploaded: ${rows(data.rows)}`);
        renderMapping();
      });
      xhr.addEventListener("error", () => {
        job.busy = false;
        job.xhr = null;
        pick.disabled = false;
        setStatus();
        showError("Can't reach the engine. Is `openprod serve` still running?");
      });
      xhr.send(f);
    };
    pick.addEventListener("click", () => file.click());
    file.addEventListener("change", () => {
      const f = file.files && file.files[0];
      file.value = "";
      upload(f);
    });
    const onDrag = (e) => {
      if (!e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = job.busy || job.imported ? "none" : "copy";
      m.dlg.classList.add("csv-dragging");
    };
    m.dlg.addEventListener("dragenter", onDrag);
    m.dlg.addEventListener("dragover", onDrag);
    m.dlg.addEventListener("dragleave", (e) => {
      if (e.target === m.dlg || !m.dlg.contains(e.relatedTarget)) {
        m.dlg.classList.remove("csv-dragging");
      }
    });
    m.dlg.addEventListener("drop", (e) => {
      m.dlg.classList.remove("csv-dragging");
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      e.preventDefault();
      if (!job.imported) upload(e.dataTransfer.files[0]);
    });

    // --- step 2: the mapping ---
    const results = el("div", { class: "csv-results" });
    const importable = () => table.fields.filter((f) => !(job.upload.unimportable || {})[f.name]);
    const renderMapping = () => {
      const up = job.upload;
      const summary = el("p", { class: "csv-summary" },
        el("strong", { text: up.name }),
        ` · ${rows(up.rows)} · ${up.encoding} · ${DELIMS[up.delimiter] || up.delimiter}`);
      const note = up.encoding_note
        ? el("p", { class: "csv-note" }, el("span", { html: icon("warning") }), up.encoding_note)
        : "";
      const thead = el("thead", {}, el("tr", {},
        el("th", { scope: "col", text: "CSV column" }),
        el("th", { scope: "col", text: "First value" }),
        el("th", { scope: "col", text: "Field" })));
      const tbody = el("tbody");
      up.headers.forEach((h, i) => {
        const sid = `${id}-map-${i}`;
        const sel = el("select", { class: "input csv-map", id: sid, "data-column": h });
        sel.append(el("option", { value: "", text: "Don't import" }));
        for (const f of importable()) {
          sel.append(el("option", { value: f.name, text: `${f.label} (${typeName(f)})` }));
        }
        for (const f of table.fields) {
          const why = (up.unimportable || {})[f.name];
          if (why) {
            sel.append(el("option", { value: f.name, disabled: true, title: why,
              text: `${f.label} (${f.type === "blob_ref" ? "files can't be imported"
                : "can't be imported"})` }));
          }
        }
        sel.value = job.mapping[h] || "";
        sel.addEventListener("change", () => {
          job.mapping[h] = sel.value || null;
          job.checked = null;
          renderChecked();
        });
        const sample = (up.sample || []).map((r) => r[i]).find((v) => v && v.trim()) || "";
        const skipped = (up.skipped || {})[h];
        tbody.append(el("tr", {},
          el("th", { scope: "row" }, el("label", { for: sid, text: h })),
          el("td", { class: "csv-sample", title: sample, text: sample }),
          el("td", {}, sel, skipped ? el("p", { class: "muted csv-skip", text: skipped }) : "")));
      });
      const tableEl = el("table", { class: "csv-mapping" },
        el("caption", { class: "sr-only", text: "Which field each CSV column goes to" }),
        thead, tbody);
      main.replaceChildren(summary, note,
        el("p", { class: "muted", text: "Columns are matched to fields by their names; " +
          "check each one, then press Check." }),
        el("div", { class: "csv-mapping-wrap" }, tableEl), results);
      check.disabled = false;
      renderChecked();
      m.dlg.querySelector(".csv-map")?.focus();
    };

    const renderChecked = () => {
      const c = job.checked;
      go.disabled = !c || !c.ok || job.busy;
      go.textContent = c && c.ok ? `Import ${rows(c.ok)}` : "Import";
      go.title = c ? (c.error_rows ? "Rows with errors are skipped" : "") :
        "Check the file first";
      check.textContent = job.upload && !c && job.checkedOnce ? "Check again" : "Check";
      if (!c) {
        results.replaceChildren(job.checkedOnce
          ? el("p", { class: "muted", text: "The fields changed: check again." }) : "");
        return;
      }
      const head = el("p", { class: "csv-check-summary" },
        el("span", { html: icon(c.error_rows ? "warning" : "check") }),
        c.error_rows ? `${rows(c.ok)} ready, ${num(c.error_rows)} with errors` +
          " (they will be skipped)" : `${rows(c.ok)} ready, no errors`);
      const parts = [head];
      if (c.errors.length) {
        const shown = c.errors.slice(0, ERRORS_SHOWN);
        const tb = el("tbody");
        for (const e of shown) {
          tb.append(el("tr", {},
            el("td", { class: "csv-num", text: String(e.row) }),
            el("td", { text: e.column || "—" }),
            el("td", { class: "csv-value", title: e.value, text: e.value }),
            el("td", { text: e.message })));
        }
        parts.push(el("div", { class: "csv-errors-wrap" }, el("table", { class: "csv-errors" },
          el("caption", { class: "sr-only", text: "Rows with errors" }),
          el("thead", {}, el("tr", {},
            el("th", { scope: "col", text: "Row" }), el("th", { scope: "col", text: "Column" }),
            el("th", { scope: "col", text: "Value" }),
            el("th", { scope: "col", text: "Problem" }))), tb)));
        if (c.more_errors) {
          parts.push(el("p", { class: "muted", text: `and more: ${num(c.error_rows)} rows ` +
            `have errors; the first ${num(shown.length)} problems are listed` }));
        } else if (c.errors.length > shown.length) {
          parts.push(el("p", { class: "muted",
            text: `and ${num(c.errors.length - shown.length)} more` }));
        }
      }
      results.replaceChildren(...parts);
    };

    check.addEventListener("click", async () => {
      if (!job.upload || job.busy) return;
      showError("");
      job.busy = true;
      check.disabled = true;
      setStatus(el("p", { class: "csv-progress-text", text: `Checking ${rows(job.upload.rows)}…` }));
      try {
        job.checked = await this.ctx.api.post("/import/csv/check", {
          upload_id: job.upload.upload_id, table: table.id, mapping: job.mapping });
        job.checkedOnce = true;
        this.ctx.announce(job.checked.error_rows
          ? `${rows(job.checked.ok)} ready, ${num(job.checked.error_rows)} with errors`
          : `${rows(job.checked.ok)} ready`);
      } catch (err) {
        job.checked = null;
        showError(err.message || String(err));
      } finally {
        job.busy = false;
        check.disabled = false;
        setStatus();
        renderChecked();
      }
    });

    // --- step 3: the import ---
    go.addEventListener("click", async () => {
      const c = job.checked;
      if (!c || !c.ok || job.busy) return;
      const active = this.ctx.staging && this.ctx.staging.active;
      if (active) {
        const yes = await confirmDialog({ title: "Stash your staging session?",
          text: `Your staging session “${active.name}” will be stashed: the import gets its ` +
            "own, which becomes the active one. You can activate yours again from Overlays.",
          confirmLabel: "Stash it and import" });
        if (!yes) return;
      }
      showError("");
      job.busy = true;
      go.disabled = check.disabled = cancel.disabled = true;
      for (const s of m.dlg.querySelectorAll(".csv-map")) s.disabled = true;
      const total = job.upload.rows;
      const bar = progressBar("Import progress", 0, total);
      const text = el("p", { class: "csv-progress-text", text: `Importing ${rows(total)}…` });
      setStatus(text, bar);
      job.onProgress = (ev) => {
        bar.max = ev.total || total;
        bar.value = ev.done;
        text.textContent = `Importing… ${num(ev.done)} of ${rows(ev.total || total)}`;
      };
      try {
        const r = await this.ctx.api.post("/import/csv", { upload_id: job.upload.upload_id,
          table: table.id, mapping: job.mapping, name: job.upload.name });
        job.imported = r;
        bar.value = bar.max;
        const msg = `${r.name} — ${num(r.created)} new, ${num(r.errors)} ` +
          `${r.errors === 1 ? "error" : "errors"}`;
        setStatus();
        main.replaceChildren(el("div", { class: "csv-done" },
          el("span", { class: "csv-done-icon", html: icon("check") }),
          el("p", { class: "csv-done-title", text: msg }),
          el("p", { text: "The new records are staged: nobody else sees them yet. Review them " +
            "in the grid, then use Commit (or Discard) in the staging banner." })));
        results.replaceChildren();
        check.hidden = true;
        go.hidden = true;
        cancel.disabled = false;
        cancel.textContent = "Close";
        this.ctx.toast(msg);
        this.ctx.announce(msg);
        if (this.ctx.staging && this.ctx.staging.refresh) {
          this.ctx.staging.refresh().catch(() => {});
        }
        cancel.focus();
      } catch (err) {
        setStatus();
        showError(err.message || String(err));
        go.disabled = false;
        check.disabled = false;
        cancel.disabled = false;
        for (const s of m.dlg.querySelectorAll(".csv-map")) s.disabled = false;
      } finally {
        job.busy = false;
        job.onProgress = null;
      }
    });

    cancel.addEventListener("click", () => {
      if (!cancel.disabled) m.close(job.imported);
    });
    m.done.then(() => {
      if (job.xhr) job.xhr.abort();
      if (!job.imported) this.discard(job);
      if (this.job === job) this.job = null;
    });
    // Esc / × while the import runs: the import goes on (the engine finishes it)
    pick.focus();
    return m.done;
  }

  /** Forget the dialog's upload on the engine (its temporary file goes). */
  discard(job) {
    const up = job.upload;
    if (!up || job.imported) return;
    job.upload = null;
    this.ctx.api.post("/import/csv/discard", { upload_id: up.upload_id }).catch(() => {});
  }

  // --- export -----------------------------------------------------------------------------

  /** The current view: its records in display order, its columns. */
  exportView() {
    const table = this.ctx.table();
    if (!table) return Promise.resolve(false);
    const ids = this.ctx.visibleIds();
    const columns = (this.ctx.columns() || []).map((c) => c.name);
    return this.download("POST", "/export/csv", { table: table.id, ids, columns },
      `${table.label}.csv`, ids.length);
  }

  /** Every record of the table, every field. */
  exportTable() {
    const table = this.ctx.table();
    if (!table) return Promise.resolve(false);
    return this.download("GET", `/export/csv?${new URLSearchParams({ table: table.id })}`,
      null, `${table.label}.csv`, null);
  }

  async download(method, url, body, fallbackName, count) {
    const init = { method, credentials: "same-origin", headers: { Accept: "text/csv" } };
    if (body) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch {
      this.ctx.toast("Can't reach the engine. Is `openprod serve` still running?",
        { kind: "error" });
      return false;
    }
    if (!resp.ok) {
      const text = await resp.text();
      this.ctx.toast(`Couldn't export: ${errorText(resp.status, text, "the engine refused")}`,
        { kind: "error", timeout: 10000 });
      return false;
    }
    const blob = await resp.blob();
    const name = dispositionName(resp.headers.get("Content-Disposition")) || fallbackName;
    const href = URL.createObjectURL(blob);
    const a = el("a", { href, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60000);
    const what = count === null ? "the whole table" : `${count === 1 ? "1 record"
      : `${num(count)} records`}`;
    this.ctx.announce(`Exported ${what} to ${name}`);
    return true;
  }

  /** The Export CSV ▾ menu under its button: Current view / Whole table. */
  exportMenu(anchor) {
    document.querySelector(".csv-menu")?.remove();
    const table = this.ctx.table();
    if (!table) return;
    const n = this.ctx.visibleIds().length;
    const item = (text, hint, run) => {
      const b = el("button", { type: "button", role: "menuitem", class: "csv-menu-item" },
        el("span", { class: "csv-menu-label", text }), el("span", { class: "muted", text: hint }));
      b.addEventListener("click", () => {
        close();
        run();
      });
      return b;
    };
    const menu = el("div", { class: "csv-menu", role: "menu", "aria-label": "Export CSV" },
      item("Current view", `${n === 1 ? "1 record" : `${num(n)} records`}, columns as shown`,
        () => this.exportView()),
      item("Whole table", "every record and field", () => this.exportTable()));
    const r = anchor.getBoundingClientRect();
    menu.style.top = `${r.bottom + 4}px`;
    menu.style.left = `${Math.max(8, r.right - 260)}px`;
    // inside the anchor's landmark (fixed position: placed in the viewport)
    (anchor.closest("main, [role=main], header, aside") || document.body).append(menu);
    anchor.setAttribute("aria-expanded", "true");
    const items = [...menu.querySelectorAll('[role="menuitem"]')];
    items[0].focus();
    const onKey = (e) => {
      const i = items.indexOf(document.activeElement);
      if (e.key === "Escape") {
        e.preventDefault();
        close();
        anchor.focus();
      } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        items[(i + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length].focus();
      } else if (e.key === "Tab") {
        close();
      }
    };
    const onDown = (e) => {
      if (!menu.contains(e.target) && e.target !== anchor) close();
    };
    function close() {
      menu.remove();
      anchor.setAttribute("aria-expanded", "false");
      menu.removeEventListener("keydown", onKey);
      document.removeEventListener("mousedown", onDown, true);
    }
    menu.addEventListener("keydown", onKey);
    document.addEventListener("mousedown", onDown, true);
  }
}
