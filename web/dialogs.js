// Modal dialogs built on <dialog> (focus trapping, Esc to close and the backdrop come from the
// browser). For now: New table.

import { icon } from "./icons.js";
import { FIELD_KINDS } from "./format.js";
import { el } from "./dom.js";


let uid = 0;

/**
 * The New table dialog: a name and typed fields.
 * `tables` lists existing tables (targets for Record link fields); `create(body)` performs
 * POST /tables/create and resolves with the new table id, or throws an Error whose message is
 * shown in the dialog. Resolves with the new table id, or null when cancelled.
 */
export function newTableDialog({ tables, create }) {
  return new Promise((resolve) => {
    const n = ++uid;
    const dlg = el("dialog", { class: "dialog", "aria-labelledby": `nt-title-${n}` });
    const form = el("form", { method: "dialog", novalidate: true });
    const name = el("input", {
      id: `nt-name-${n}`, class: "input", type: "text", required: true, autocomplete: "off",
      placeholder: "e.g. Cast, Cue list, Schedule",
    });
    const rows = el("div", { class: "field-rows" });
    const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
    const addField = el("button", { type: "button", class: "btn btn-ghost btn-sm" },
      el("span", { html: icon("plus") }), "Add field");
    const cancel = el("button", { type: "button", class: "btn btn-secondary", text: "Cancel" });
    const submit = el("button", { type: "submit", class: "btn btn-primary", text: "Create table" });

    form.append(
      el("header", { class: "dialog-head" },
        el("h2", { id: `nt-title-${n}`, text: "New table" }),
        el("button", {
          type: "button", class: "icon-btn dialog-x", "aria-label": "Close", html: icon("close"),
        })),
      el("div", { class: "dialog-body" },
        el("label", { class: "label", for: `nt-name-${n}`, text: "Table name" }), name,
        el("div", { class: "fields-head" },
          el("h3", { class: "label", id: `nt-fields-${n}`, text: "Fields" }),
          el("span", { class: "muted", text: "Each field has a type; values are checked by it." })),
        el("div", { class: "field-cols", "aria-hidden": "true" },
          el("span", { text: "Name" }), el("span", { text: "Type" }), el("span")),
        rows, addField, error),
      el("footer", { class: "dialog-foot" }, cancel, submit));
    dlg.append(form);

    const renumber = () => {
      [...rows.children].forEach((row, i) => {
        const k = i + 1;
        row.setAttribute("aria-label", `Field ${k}`);
        row.querySelector(".f-label").setAttribute("aria-label", `Field ${k} name`);
        row.querySelector(".f-type").setAttribute("aria-label", `Field ${k} type`);
        row.querySelector(".f-remove").setAttribute("aria-label", `Remove field ${k}`);
        const ch = row.querySelector(".f-choices");
        if (ch) ch.setAttribute("aria-label", `Field ${k} choices`);
        const lt = row.querySelector(".f-link");
        if (lt) lt.setAttribute("aria-label", `Field ${k} linked table`);
        row.querySelector(".f-remove").disabled = rows.children.length === 1;
      });
    };

    const fieldRow = (label = "", kind = "text") => {
      const row = el("div", { class: "field-row", role: "group" });
      const lab = el("input", {
        class: "input f-label", type: "text", autocomplete: "off", placeholder: "Field name",
      });
      lab.value = label;
      const type = el("select", { class: "input f-type" });
      for (const k of FIELD_KINDS) type.append(el("option", { value: k.kind, text: k.label }));
      type.value = kind;
      const extra = el("div", { class: "field-extra" });
      const remove = el("button", {
        type: "button", class: "icon-btn f-remove", title: "Remove field", html: icon("close"),
      });
      const syncExtra = () => {
        extra.replaceChildren();
        if (type.value === "enum") {
          extra.append(el("input", {
            class: "input f-choices", type: "text", autocomplete: "off",
            placeholder: "Choices, comma-separated: Lead, Chorus, Understudy",
          }));
        } else if (type.value === "entity_ref") {
          const sel = el("select", { class: "input f-link" });
          sel.append(el("option", { value: "", text: "Links to: any record" }));
          for (const t of tables) sel.append(el("option", { value: t.id, text: `Links to: ${t.label}` }));
          extra.append(sel);
        }
        extra.hidden = !extra.firstChild;
        renumber();
      };
      type.addEventListener("change", syncExtra);
      remove.addEventListener("click", () => {
        const next = row.nextElementSibling || row.previousElementSibling;
        row.remove();
        renumber();
        next?.querySelector(".f-label")?.focus();
      });
      row.append(lab, type, remove, extra);
      rows.append(row);
      syncExtra();
      return row;
    };

    const collect = () => {
      const fields = [];
      for (const row of rows.children) {
        const label = row.querySelector(".f-label").value.trim();
        const kind = FIELD_KINDS.find((k) => k.kind === row.querySelector(".f-type").value);
        if (!label) {
          if (rows.children.length > 1 && kind.kind === "text") continue; // a blank extra row
          throw new Error("Every field needs a name.");
        }
        const spec = { label, type: kind.type };
        if (kind.crdt) spec.crdt = true;
        if (kind.kind === "enum") {
          const choices = row.querySelector(".f-choices").value.split(",").map((s) => s.trim())
            .filter(Boolean);
          if (!choices.length) throw new Error(`Give “${label}” at least one choice.`);
          spec.options = { choices };
        }
        if (kind.kind === "entity_ref") {
          const target = row.querySelector(".f-link").value;
          if (target) spec.options = { ref_table: target };
        }
        fields.push(spec);
      }
      return fields;
    };

    const showError = (msg) => {
      error.replaceChildren(el("span", { html: icon("error") }), document.createTextNode(msg));
      error.hidden = false;
    };

    fieldRow("Name", "text");
    addField.addEventListener("click", () => fieldRow().querySelector(".f-label").focus());
    const close = (result) => {
      dlg.close();
      dlg.remove();
      resolve(result);
    };
    cancel.addEventListener("click", () => close(null));
    form.querySelector(".dialog-x").addEventListener("click", () => close(null));
    dlg.addEventListener("cancel", (e) => {
      e.preventDefault();
      close(null);
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.hidden = true;
      const label = name.value.trim();
      if (!label) {
        showError("Give the table a name.");
        name.focus();
        return;
      }
      let fields;
      try {
        fields = collect();
      } catch (err) {
        showError(err.message);
        return;
      }
      submit.disabled = true;
      submit.textContent = "Creating…";
      try {
        const id = await create({ label, fields });
        close(id);
      } catch (err) {
        showError(err.message || String(err));
        submit.disabled = false;
        submit.textContent = "Create table";
      }
    });
    document.body.append(dlg);
    dlg.showModal();
    name.focus();
  });
}

/**
 * A generic modal: `title`, `body` (nodes), `actions` ([{label, kind, run, type}]) in the footer.
 * Returns {dlg, body, foot, close(result), done: Promise<result>}. Esc, × and Cancel-like
 * actions close it with null.
 */
export function modal({ title, body = [], actions = [], wide = false, cls = "" }) {
  const n = ++uid;
  const dlg = el("dialog", {
    class: `dialog${wide ? " dialog-wide" : ""}${cls ? " " + cls : ""}`,
    "aria-labelledby": `md-title-${n}`,
  });
  const bodyEl = el("div", { class: "dialog-body" }, ...body);
  const foot = el("footer", { class: "dialog-foot" });
  const form = el("form", { method: "dialog", novalidate: true },
    el("header", { class: "dialog-head" },
      el("h2", { id: `md-title-${n}`, text: title }),
      el("button", { type: "button", class: "icon-btn dialog-x", "aria-label": "Close",
        html: icon("close") })),
    bodyEl, foot);
  dlg.append(form);
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  const close = (result = null) => {
    if (!dlg.isConnected) return;
    dlg.close();
    dlg.remove();
    resolveDone(result);
  };
  for (const a of actions) {
    const b = el("button", {
      type: a.type || "button", class: `btn ${a.kind || "btn-secondary"}`, text: a.label,
    });
    if (a.id) b.id = a.id;
    b.addEventListener("click", (e) => {
      if (a.type === "submit") return;
      e.preventDefault();
      if (a.run) a.run(close); else close(null);
    });
    foot.append(b);
  }
  foot.hidden = !actions.length;
  form.querySelector(".dialog-x").addEventListener("click", () => close(null));
  dlg.addEventListener("cancel", (e) => {
    e.preventDefault();
    close(null);
  });
  document.body.append(dlg);
  dlg.showModal();
  return { dlg, form, body: bodyEl, foot, close, done };
}

/** Ask for one line of text (e.g. an overlay's name). Resolves with the text or null. */
export function askText({ title, label, placeholder = "", initial = "", submitLabel = "OK",
  help = "" }) {
  const n = ++uid;
  const input = el("input", {
    id: `ask-${n}`, class: "input", type: "text", autocomplete: "off", placeholder, required: true,
  });
  input.value = initial;
  const error = el("p", { class: "dialog-error", role: "alert", hidden: true });
  const m = modal({
    title,
    body: [el("label", { class: "label", for: `ask-${n}`, text: label }), input,
      help ? el("p", { class: "muted help", text: help }) : "", error],
    actions: [{ label: "Cancel" }, { label: submitLabel, kind: "btn-primary", type: "submit" }],
  });
  m.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const v = input.value.trim();
    if (!v) {
      error.textContent = `${label} is required.`;
      error.hidden = false;
      input.focus();
      return;
    }
    m.close(v);
  });
  input.focus();
  return m.done;
}

/** A yes/no question in a styled modal. Resolves true when confirmed. */
export function confirmDialog({ title, text, confirmLabel = "OK", danger = false }) {
  const m = modal({
    title,
    body: [el("p", { class: "confirm-text", text })],
    actions: [{ label: "Cancel" },
      { label: confirmLabel, kind: danger ? "btn-danger" : "btn-primary",
        run: (close) => close(true) }],
  });
  m.foot.lastChild.focus();
  return m.done.then((r) => r === true);
}
