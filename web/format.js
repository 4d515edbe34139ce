// Field types as the UI presents them: names, header glyphs, display text, and the conversion
// between what an editor holds and the JSON value sent to the engine. Validation is the
// engine's: text the UI cannot read as a number is sent as typed so the engine's own message
// explains the rejection.

/** The choices offered by the New table dialog, in menu order. */
export const FIELD_KINDS = [
  { kind: "text", label: "Text", type: "text" },
  { kind: "longtext", label: "Long text (collaborative)", type: "text", crdt: true },
  { kind: "integer", label: "Integer", type: "integer" },
  { kind: "float", label: "Number (decimal)", type: "float" },
  { kind: "boolean", label: "Yes/No", type: "boolean" },
  { kind: "date", label: "Date", type: "date" },
  { kind: "datetime", label: "Date & time", type: "datetime" },
  { kind: "duration", label: "Duration", type: "duration" },
  { kind: "enum", label: "Choice", type: "enum" },
  { kind: "entity_ref", label: "Record link", type: "entity_ref" },
  { kind: "blob_ref", label: "File", type: "blob_ref" },
];

const TYPE_INFO = {
  text: { name: "Text", glyph: "Aa" },
  longtext: { name: "Long text (collaborative: concurrent typing merges)", glyph: "¶" },
  integer: { name: "Integer (whole number)", glyph: "#" },
  float: { name: "Number (decimal)", glyph: "1.5" },
  boolean: { name: "Yes/No", icon: "check" },
  date: { name: "Date", icon: "calendar" },
  datetime: { name: "Date & time", icon: "clock" },
  duration: { name: "Duration (h:mm:ss)", icon: "timer" },
  enum: { name: "Choice", icon: "list" },
  entity_ref: { name: "Record link", icon: "link" },
  blob_ref: { name: "File", icon: "file" },
};

export function kindOf(field) {
  return field.type === "text" && field.crdt ? "longtext" : field.type;
}

export function typeName(field) {
  return (TYPE_INFO[kindOf(field)] || { name: field.type }).name;
}

/** {glyph: text} or {icon: name} for a field's header badge. */
export function typeBadge(field) {
  return TYPE_INFO[kindOf(field)] || { glyph: "?" };
}

export function isNumeric(field) {
  return field.type === "integer" || field.type === "float" || field.type === "duration";
}

/** [{key, label}] of an enum field (choices may be keys or [key, label] pairs). */
export function choicesOf(field) {
  const raw = (field.options && field.options.choices) || [];
  return raw.map((c) => (Array.isArray(c) ? { key: String(c[0]), label: String(c[1] ?? c[0]) }
    : { key: String(c), label: String(c) }));
}

export function choiceLabel(field, key) {
  const c = choicesOf(field).find((x) => x.key === key);
  return c ? c.label : String(key);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

export function formatDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return String(ms);
  const sign = ms < 0 ? "-" : "";
  let rest = Math.abs(ms);
  const h = Math.floor(rest / 3600000);
  rest -= h * 3600000;
  const m = Math.floor(rest / 60000);
  rest -= m * 60000;
  const s = Math.floor(rest / 1000);
  const frac = rest - s * 1000;
  return `${sign}${h}:${pad(m)}:${pad(s)}${frac ? "." + pad(frac, 3) : ""}`;
}

/** Milliseconds from "h:mm:ss", "h:mm", "mm:ss.s" style text or a number of minutes. */
export function parseDuration(text) {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(parseFloat(t) * 60000);
  let m = /^(-)?(\d+):(\d{1,2})(?::(\d{1,2})(\.\d{1,3})?)?$/.exec(t);
  if (m) {
    const [, neg, h, mm, ss, frac] = m;
    if (+mm > 59 || (ss !== undefined && +ss > 59)) return null;
    const ms = (+h * 3600 + +mm * 60 + (ss ? +ss : 0)) * 1000 +
      (frac ? Math.round(parseFloat(frac) * 1000) : 0);
    return neg ? -ms : ms;
  }
  m = /^(\d+)\s*(h|m|min|s)$/i.exec(t);
  if (m) return +m[1] * { h: 3600000, m: 60000, min: 60000, s: 1000 }[m[2].toLowerCase()];
  return null;
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function formatDate(iso) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(iso));
  if (!m) return String(iso);
  return dateFmt.format(new Date(Date.UTC(+m[1], +m[2] - 1, +m[3])));
}

export function formatDateTime(ms) {
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? String(ms) : dateTimeFmt.format(d);
}

/** The value of an <input type=datetime-local> for ms since the epoch (local time). */
export function toDateTimeLocal(ms) {
  if (typeof ms !== "number") return "";
  const d = new Date(ms);
  const s = d.getSeconds() ? `:${pad(d.getSeconds())}` : "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}${s}`;
}

const fileNames = new Map(); // hash -> file name, as files.js learnt it from the engine

/** Remember a file's name, so conflicts and staged changes name it instead of its hash. */
export function rememberFileName(hash, name) {
  if (name) fileNames.set(hash, name);
}

/** Plain display text of a value (links and booleans get richer rendering in the grid). */
export function displayText(field, v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return "(linked value)";
  switch (field.type) {
    case "blob_ref": return fileNames.get(v) || `File …${String(v).slice(-6)}`;
    case "boolean": return v ? "Yes" : "No";
    case "date": return formatDate(v);
    case "datetime": return formatDateTime(v);
    case "duration": return formatDuration(v);
    case "enum": return choiceLabel(field, v);
    default: return String(v);
  }
}

/** What an editor starts with for a value. */
export function editText(field, v) {
  if (v === null || v === undefined || typeof v === "object") return "";
  switch (field.type) {
    case "datetime": return toDateTimeLocal(v);
    case "duration": return formatDuration(v);
    default: return String(v);
  }
}

export class ParseError extends Error {}

const NUMBER_RE = /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i;

/** Editor text to the JSON value sent to the engine (null clears the field). */
export function parseInput(field, text) {
  const t = typeof text === "string" ? text : String(text ?? "");
  switch (field.type) {
    case "text":
      return t === "" ? null : t;
    case "integer":
    case "float": {
      const s = t.trim().replace(/[\s_]/g, "");
      if (s === "") return null;
      return NUMBER_RE.test(s) ? Number(s) : t.trim();
    }
    case "duration": {
      if (t.trim() === "") return null;
      const ms = parseDuration(t);
      if (ms === null) throw new ParseError("Enter a duration as h:mm:ss, h:mm or minutes");
      return ms;
    }
    case "datetime": {
      if (t === "") return null;
      const d = new Date(t);
      if (Number.isNaN(d.getTime())) return t;
      return d.getTime();
    }
    case "date":
    case "enum":
    case "entity_ref":
      return t.trim() === "" ? null : t.trim();
    default:
      return t === "" ? null : t;
  }
}

/** Short, stable id suffix for showing a record id to a person. */
export function shortId(id) {
  return String(id).replace(/-/g, "").slice(-6);
}
