// Spreadsheet text on the clipboard: parsing and formatting of tab- (or comma-) separated
// blocks with Excel's quoting rules, and the conversion of one pasted text to a field's value.
// Pure functions only (no DOM, no requests), so the grid and the CSV code can share them.
//
// Excel's rules: a cell holding the separator, a line break or a double quote is wrapped in
// double quotes, and each double quote inside is doubled. Rows end with CRLF (LF accepted);
// Excel ends the block with one line break, which is not an extra empty row.

import * as F from "./format.js";

/** Parse delimited text into rows of cells (a rectangle is not enforced). */
export function parseDelimited(text, sep = "\t") {
  const s = String(text ?? "");
  const rows = [];
  let row = [];
  let cell = "";
  let i = 0;
  let atStart = true; // at the start of a cell: a quote here opens a quoted cell
  while (i < s.length) {
    const ch = s[i];
    if (atStart && ch === '"') {
      // quoted cell: up to the closing quote ("" is a literal quote)
      i += 1;
      let closed = false;
      while (i < s.length) {
        if (s[i] === '"') {
          if (s[i + 1] === '"') {
            cell += '"';
            i += 2;
            continue;
          }
          i += 1;
          closed = true;
          break;
        }
        cell += s[i];
        i += 1;
      }
      if (!closed) {
        // not a quoted cell after all (a lone quote at a cell's start): keep it verbatim
        cell = '"' + cell;
      }
      atStart = false;
      continue;
    }
    atStart = false;
    if (ch === sep) {
      row.push(cell);
      cell = "";
      atStart = true;
      i += 1;
    } else if (ch === "\r" || ch === "\n") {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
      atStart = true;
      i += ch === "\r" && s[i + 1] === "\n" ? 2 : 1;
    } else {
      cell += ch;
      i += 1;
    }
  }
  if (!atStart || cell !== "" || row.length) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}

/** Parse what a spreadsheet puts on the clipboard as text/plain (tab-separated). */
export function parseTSV(text) {
  return parseDelimited(text, "\t");
}

export function parseCSV(text) {
  return parseDelimited(text, ",");
}

/** Quote one cell the way Excel does, when it needs it. */
export function quoteCell(v, sep = "\t") {
  const s = String(v ?? "");
  if (s.includes(sep) || s.includes("\n") || s.includes("\r") || s.includes('"')) {
    return `"${s.replace(/"/g, '""')}"`;
  }
  return s;
}

/** Rows of cell texts to delimited text (CRLF line ends, no trailing line break). */
export function formatDelimited(rows, sep = "\t") {
  return rows.map((r) => r.map((c) => quoteCell(c, sep)).join(sep)).join("\r\n");
}

export function formatTSV(rows) {
  return formatDelimited(rows, "\t");
}

export function formatCSV(rows) {
  return formatDelimited(rows, ",");
}

const escapeHtml = (s) => String(s ?? "").replace(/[&<>"]/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

/** A plain HTML table of the rows (for pasting into word processors and spreadsheets). */
export function formatHTML(rows, header = null) {
  const line = (r, tag) => `<tr>${r.map((c) => `<${tag}>${escapeHtml(c)
    .replace(/\r?\n/g, "<br>")}</${tag}>`).join("")}</tr>`;
  return `<table>${header ? `<thead>${line(header, "th")}</thead>` : ""}<tbody>${
    rows.map((r) => line(r, "td")).join("")}</tbody></table>`;
}

// --- values <-> text ------------------------------------------------------------------------

const pad = (n, w = 2) => String(n).padStart(w, "0");

/**
 * The text a value is copied as: what typing it back (or a spreadsheet) understands.
 * helpers: {linkLabel(id) → name|null, fileName(hash) → name}
 */
export function copyText(field, v, helpers = {}) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  switch (field.type) {
    case "boolean": return v ? "TRUE" : "FALSE";
    case "duration": return F.formatDuration(v);
    case "datetime": {
      const d = new Date(v);
      if (Number.isNaN(d.getTime())) return String(v);
      return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
        `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    }
    case "enum": return F.choiceLabel(field, v);
    case "entity_ref": return (helpers.linkLabel && helpers.linkLabel(v)) || String(v);
    case "blob_ref": return F.displayText(field, v);
    default: return String(v);
  }
}

export class PasteError extends Error {}

const TRUE_WORDS = new Set(["true", "yes", "y", "1", "x", "✓", "✔", "on", "checked", "oui", "ja"]);
const FALSE_WORDS = new Set(["false", "no", "n", "0", "off", "unchecked", "non", "nein", "-"]);
const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
  "dec"];

function isoDate(y, m, d) {
  const dt = new Date(Date.UTC(y, m - 1, d));
  if (dt.getUTCFullYear() !== y || dt.getUTCMonth() !== m - 1 || dt.getUTCDate() !== d) {
    return null;
  }
  return `${pad(y, 4)}-${pad(m)}-${pad(d)}`;
}

/** "2024-05-01", "5/1/2024" (month first when `monthFirst`), "1 May 2024", "May 1, 2024". */
export function parseDate(text, monthFirst = true) {
  const t = text.trim();
  let m = /^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T].*)?$/.exec(t);
  if (m) return isoDate(+m[1], +m[2], +m[3]);
  m = /^(\d{1,2})[/.](\d{1,2})[/.](\d{2}|\d{4})$/.exec(t);
  if (m) {
    let y = +m[3];
    if (m[3].length === 2) y += y < 70 ? 2000 : 1900;
    const [a, b] = [+m[1], +m[2]];
    return monthFirst ? isoDate(y, a, b) : isoDate(y, b, a);
  }
  m = /^(\d{1,2})\.?\s+([a-z]{3,})\.?,?\s+(\d{4})$/i.exec(t);
  if (m) {
    const mo = MONTHS.indexOf(m[2].slice(0, 3).toLowerCase());
    return mo >= 0 ? isoDate(+m[3], mo + 1, +m[1]) : null;
  }
  m = /^([a-z]{3,})\.?\s+(\d{1,2}),?\s+(\d{4})$/i.exec(t);
  if (m) {
    const mo = MONTHS.indexOf(m[1].slice(0, 3).toLowerCase());
    return mo >= 0 ? isoDate(+m[3], mo + 1, +m[2]) : null;
  }
  return null;
}

function parseNumber(text, integer) {
  let s = text.trim().replace(/[\s_\u00a0]/g, "");
  if (/^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$/.test(s)) s = s.replace(/,/g, "");
  if (!/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(s)) {
    throw new PasteError(integer ? "is not a whole number" : "is not a number");
  }
  const n = Number(s);
  if (integer && !Number.isInteger(n)) throw new PasteError("is not a whole number");
  return n;
}

/**
 * A pasted text as the value for `field`, the way the grid's editors read typed text.
 * Empty text clears the field (null). Throws PasteError with a short reason otherwise.
 * ctx: {links: [{id, label}] | null (entity_ref candidates), monthFirst: bool}
 */
export function pasteValue(field, text, ctx = {}) {
  const raw = String(text ?? "");
  const t = raw.trim();
  if (field.type === "blob_ref") throw new PasteError("is a file field (attach files instead)");
  if (t === "") return null;
  switch (field.type) {
    case "text":
      return raw;
    case "integer":
      return parseNumber(t, true);
    case "float":
      return parseNumber(t, false);
    case "boolean": {
      const w = t.toLowerCase();
      if (TRUE_WORDS.has(w)) return true;
      if (FALSE_WORDS.has(w)) return false;
      throw new PasteError("is not yes or no");
    }
    case "duration": {
      const ms = F.parseDuration(t);
      if (ms === null) throw new PasteError("is not a duration (h:mm:ss)");
      return ms;
    }
    case "date": {
      const d = parseDate(t, ctx.monthFirst !== false);
      if (!d) throw new PasteError("is not a date");
      return d;
    }
    case "datetime": {
      const iso = /^(\d{4}-\d{1,2}-\d{1,2})[ T](\d{1,2}:\d{2}(:\d{2})?)$/.exec(t);
      const d = new Date(iso ? `${iso[1]}T${iso[2].padStart(5, "0")}` : t);
      if (Number.isNaN(d.getTime())) throw new PasteError("is not a date and time");
      return d.getTime();
    }
    case "enum": {
      const choices = F.choicesOf(field);
      const w = t.toLowerCase();
      const hit = choices.find((c) => c.label.toLowerCase() === w) ||
        choices.find((c) => c.key.toLowerCase() === w);
      if (!hit) throw new PasteError("is not one of the choices");
      return hit.key;
    }
    case "entity_ref": {
      const items = ctx.links || [];
      const byId = items.find((it) => it.id === t);
      if (byId) return byId.id;
      const w = t.toLowerCase();
      const hits = items.filter((it) => String(it.label ?? "").trim().toLowerCase() === w);
      if (hits.length === 1) return hits[0].id;
      if (hits.length > 1) throw new PasteError(`matches ${hits.length} records`);
      throw new PasteError("is not the name of a record");
    }
    default:
      return raw;
  }
}
