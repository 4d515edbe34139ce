// Cue list view of the lighting_cues module: every cue in number order, called cues marked.
// Runs in the module sandbox (spec 04 §1): data comes only through `api`, the postMessage
// bridge to the query API (`api.query(query) -> Promise<[{id, values}]>`; optional
// `api.onChange(listener) -> unsubscribe`).

const TABLE = "lighting_cues.Cues";

// Cue numbers are text ("12", "12.5", "12A"): compare the numeric part first so 9 < 10.
export function compareCues(a, b) {
  const na = parseFloat(a), nb = parseFloat(b);
  if (!Number.isNaN(na) && !Number.isNaN(nb) && na !== nb) return na - nb;
  return String(a).localeCompare(String(b));
}

function seconds(ms) {
  return ms == null ? "" : `${(ms / 1000).toFixed(1)}s`;
}

export function render(element, records) {
  const doc = element.ownerDocument;
  const table = doc.createElement("table");
  table.className = "cue-list";
  const head = table.createTHead().insertRow();
  for (const title of ["Cue", "Label", "Time", "Page", "Called"]) {
    const th = doc.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  const body = table.createTBody();
  const rows = [...records].sort((x, y) => compareCues(x.values.number ?? "", y.values.number ?? ""));
  for (const r of rows) {
    const v = r.values;
    const tr = body.insertRow();
    tr.dataset.id = r.id;
    if (v.is_called) tr.className = "called";
    for (const text of [v.number ?? "", v.label ?? "", seconds(v.time), v.page ?? "",
                        v.is_called ? "yes" : ""]) {
      tr.insertCell().textContent = String(text);
    }
  }
  element.replaceChildren(table);
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
