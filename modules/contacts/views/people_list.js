// People list view of the contacts module: name, role, department, phone, email.
// Data comes only through `api` (spec 04 §1): `api.query(query) -> Promise<[{id, values}]>`,
// optional `api.onChange(listener) -> unsubscribe`.

const TABLE = "contacts.People";
const COLUMNS = [["full_name", "Name"], ["role", "Role"], ["department", "Department"],
                 ["phone", "Phone"], ["email", "Email"]];

export function render(element, records) {
  const doc = element.ownerDocument;
  const list = doc.createElement("table");
  list.className = "people-list";
  const head = list.createTHead().insertRow();
  for (const [, title] of COLUMNS) {
    const th = doc.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  const body = list.createTBody();
  const rows = [...records].sort((a, b) =>
    String(a.values.full_name ?? "").localeCompare(String(b.values.full_name ?? "")));
  for (const r of rows) {
    const tr = body.insertRow();
    tr.dataset.id = r.id;
    for (const [key] of COLUMNS) tr.insertCell().textContent = String(r.values[key] ?? "");
  }
  element.replaceChildren(list);
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
