// The workspace script editor (spec 04 §7.1, spec 05 J14 "workspace scripts"): a dialog to
// write or change a script kept in the workspace itself — its name, the values it asks for,
// what it may do beyond changing this workspace's own tables, and its Lua source. Saving is
// POST /scripts/put (the engine checks everything and refuses with the field at fault);
// deleting is POST /scripts/delete. Module scripts are read-only and never open here.

import * as api from "./api.js";
import { el } from "./dom.js";
import { icon } from "./icons.js";
import { modal } from "./dialogs.js";

let uid = 0;

/** Types a script argument can have (scalar field types; a choice has no choices to offer). */
export const ARG_TYPES = [
  { type: "text", label: "Text" },
  { type: "integer", label: "Integer" },
  { type: "float", label: "Number (decimal)" },
  { type: "boolean", label: "Yes/No" },
  { type: "date", label: "Date" },
  { type: "datetime", label: "Date & time" },
  { type: "duration", label: "Duration" },
];

/** Capabilities offered as plain choices (the exchange folder is <home>/exchange). */
export const CAPABILITIES = [
  { cap: "ui.notify", label: "Show notifications" },
  { cap: "fs.read:**", label: "Read files in your exchange folder" },
  { cap: "fs.write:**", label: "Write files in your exchange folder" },
];

const STARTER = `-- Runs when you press Run; what it changes is staged for review first.
-- core.query(table) lists records, core.create_entity(table, values) adds one,
-- core.set_field(id, table, field, value) changes one; print() writes to the output.
`;

/**
 * Open the editor. `script` is a workspace script from GET /scripts/list (to edit it) or null
 * (a new one); `tables` are the workspace's tables (shown as a reference for the source).
 * Resolves with the saved script id, or null when cancelled.
 */
export function editScript({ script = null, tables = [] }) {
  const n = ++uid;
  const name = el("input", { id: `se-name-${n}`, class: "input", type: "text",
    autocomplete: "off", maxlength: "80", placeholder: "e.g. Make a call for each actor" });
  name.value = script ? script.label : "";
  const args = el("div", { class: "field-rows", role: "group", "aria-labelledby": `se-args-${n}` });
  const addArg = el("button", { type: "button", class: "btn btn-ghost btn-sm" },
    el("span", { html: icon("plus") }), "Add a value to ask for");
  const caps = el("fieldset", { class: "script-caps" },
    el("legend", { class: "label", text: "It may also" }));
  const chosen = new Set(script ? script.capabilities || [] : []);
  for (const c of CAPABILITIES) {
    const box = el("input", { type: "checkbox", id: `se-cap-${n}-${c.cap}`, value: c.cap,
      checked: chosen.has(c.cap) });
    caps.append(el("label", { class: "check", for: box.id }, box, document.createTextNode(` ${c.label}`)));
  }
  const other = [...chosen].filter((c) => !CAPABILITIES.some((x) => x.cap === c));
  const source = el("textarea", { id: `se-src-${n}`, class: "input script-source", rows: "14",
    spellcheck: "false", autocomplete: "off", "aria-describedby": `se-ref-${n}` });
  source.value = script ? script.source : STARTER;
  const reference = el("details", { class: "script-ref", id: `se-ref-${n}` },
    el("summary", { text: "This workspace's tables (for the source)" }),
    el("ul", {}, ...tables.filter((t) => t.module === "workspace").map((t) =>
      el("li", {}, el("code", { text: t.id }), document.createTextNode(` — ${t.label}: `),
        ...t.fields.flatMap((f, i) => [i ? document.createTextNode(", ") : "",
          el("code", { text: f.name })])))));
  const error = el("p", { class: "dialog-error", role: "alert", hidden: true });

  const argRow = (argName = "", type = "text") => {
    const k = args.children.length + 1;
    const input = el("input", { class: "input a-name", type: "text", autocomplete: "off",
      placeholder: "e.g. day", "aria-label": `Value ${k} name` });
    input.value = argName;
    const select = el("select", { class: "input a-type", "aria-label": `Value ${k} type` });
    for (const t of ARG_TYPES) select.append(el("option", { value: t.type, text: t.label }));
    select.value = type;
    const remove = el("button", { type: "button", class: "icon-btn", html: icon("close"),
      "aria-label": `Remove value ${k}`, title: "Remove" });
    const row = el("div", { class: "field-row" }, input, select, remove);
    remove.addEventListener("click", () => row.remove());
    args.append(row);
    return input;
  };
  for (const [a, t] of Object.entries(script ? script.args || {} : {})) argRow(a, t);
  addArg.addEventListener("click", () => argRow().focus());

  const m = modal({
    title: script ? `Edit “${script.label}”` : "New workspace script",
    wide: true, cls: "script-editor",
    body: [
      el("p", { class: "muted", text: "A workspace script is kept in this workspace: every " +
        "member can run and change it. It changes this workspace's own tables; what it " +
        "changes is staged for you to review before it applies." }),
      el("label", { class: "label", for: name.id, text: "Name" }), name,
      el("h3", { class: "label", id: `se-args-${n}`, text: "Asks for" }), args, addArg,
      caps,
      el("label", { class: "label", for: source.id, text: "Lua source" }), source, reference,
      error],
    actions: [{ label: "Cancel" }, { label: "Save script", kind: "btn-primary", type: "submit" }],
  });
  m.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {
      label: name.value.trim(), source: source.value,
      args: Object.fromEntries([...args.children].map((r) => [
        r.querySelector(".a-name").value.trim(), r.querySelector(".a-type").value])
        .filter(([a]) => a)),
      capabilities: [...caps.querySelectorAll("input:checked")].map((b) => b.value)
        .concat(other),
    };
    if (script) body.id = script.id;
    if (!body.label) {
      showError("Give the script a name.");
      name.focus();
      return;
    }
    try {
      const r = await api.post("/scripts/put", body);
      m.close(r.id);
    } catch (err) {
      showError(`Not saved: ${err.message}`);
    }
  });
  function showError(text) {
    error.textContent = text;
    error.hidden = false;
  }
  name.focus();
  return m.done;
}
