// Call sheet view of the crew_calls module: calls grouped by day, in call-time order.
// Data comes only through `api` (spec 04 §1): `api.query(query) -> Promise<[{id, values}]>`,
// optional `api.onChange(listener) -> unsubscribe`. Datetimes are ms since the epoch (UTC).

const TABLE = "crew_calls.Calls";

function clock(ms) {
  if (ms == null) return "";
  const d = new Date(ms);
  return `${String(d.getUTCHours()).padStart(2, "0")}:${String(d.getUTCMinutes()).padStart(2, "0")}`;
}

export function render(element, records) {
  const doc = element.ownerDocument;
  const byDay = new Map();
  for (const r of records) {
    const day = r.values.day ?? "";
    if (!byDay.has(day)) byDay.set(day, []);
    byDay.get(day).push(r);
  }
  const out = doc.createElement("div");
  out.className = "call-sheet";
  for (const day of [...byDay.keys()].sort()) {
    const h = doc.createElement("h3");
    h.textContent = day || "No day";
    const ul = doc.createElement("ul");
    const calls = byDay.get(day).sort((a, b) => (a.values.call_time ?? 0) - (b.values.call_time ?? 0));
    for (const r of calls) {
      const li = doc.createElement("li");
      li.dataset.id = r.id;
      const where = r.values.location ? ` @ ${r.values.location}` : "";
      li.textContent = `${clock(r.values.call_time)} ${r.values.label ?? ""}${where}`.trim();
      ul.appendChild(li);
    }
    out.append(h, ul);
  }
  element.replaceChildren(out);
}

export function mount(element, api) {
  let alive = true;
  const refresh = async () => {
    const records = await api.query({ table: TABLE });
    if (alive) render(element, records);
  };
  refresh();
  const off = api.onChange ? api.onChange(refresh) : null;
  return () => {
    alive = false;
    if (off) off();
    element.replaceChildren();
  };
}
