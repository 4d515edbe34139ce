// Inline SVG icons (stroke icons drawn for this project; no third-party set).
// Every icon is decorative: the control carrying it always has a text label or aria-label.

const PATHS = {
  plus: '<path d="M8 3v10M3 8h10"/>',
  undo: '<path d="M5.5 4 2.5 7l3 3"/><path d="M2.5 7h7a4 4 0 0 1 0 8H7"/>',
  redo: '<path d="M10.5 4l3 3-3 3"/><path d="M13.5 7h-7a4 4 0 0 0 0 8H9"/>',
  trash: '<path d="M2.5 4.5h11M6 4.5V3h4v1.5M4 4.5l.7 9h6.6l.7-9M6.8 7v4.5M9.2 7v4.5"/>',
  table: '<rect x="2" y="3" width="12" height="10" rx="1.5"/><path d="M2 6.5h12M6 6.5V13"/>',
  close: '<path d="M4 4l8 8M12 4l-8 8"/>',
  warning: '<path d="M8 2 1.5 13.5h13z"/><path d="M8 6.5v3.5M8 11.8v.2"/>',
  error: '<circle cx="8" cy="8" r="6.2"/><path d="M8 4.8v4M8 10.9v.2"/>',
  calendar: '<rect x="2.5" y="3.5" width="11" height="10" rx="1.5"/><path d="M2.5 6.5h11M5.5 2v3M10.5 2v3"/>',
  clock: '<circle cx="8" cy="8" r="5.8"/><path d="M8 4.8V8l2.2 1.6"/>',
  timer: '<path d="M4.5 2h7M4.5 14h7M5 2c0 3 6 3.5 6 6s-6 3-6 6M11 2c0 3-6 3.5-6 6s6 3 6 6"/>',
  list: '<path d="M6 4h7.5M6 8h7.5M6 12h7.5"/><path d="M2.8 4h.4M2.8 8h.4M2.8 12h.4"/>',
  check: '<rect x="2.5" y="2.5" width="11" height="11" rx="2"/><path d="m5.2 8.2 2 2 3.8-4.2"/>',
  layers: '<path d="M8 2 1.8 5.3 8 8.6l6.2-3.3z"/><path d="m1.8 8.2 6.2 3.3 6.2-3.3M1.8 11 8 14.3l6.2-3.3"/>',
  stack: '<rect x="2.5" y="6.5" width="11" height="7" rx="1.5"/><path d="M4 4.2h8M5.5 2h5"/>',
  pencil: '<path d="M10.5 2.8 13.2 5.5 6 12.7l-3.3.6.6-3.3z"/><path d="M9.2 4.1l2.7 2.7"/>',
  drift: '<path d="M2.5 5h8.5M8.5 2.5 11 5 8.5 7.5"/><path d="M13.5 11H5M7.5 8.5 5 11l2.5 2.5"/>',
  link: '<path d="M6.5 9.5l3-3M7 4.5l1-1a2.8 2.8 0 0 1 4 4l-1 1M9 11.5l-1 1a2.8 2.8 0 0 1-4-4l1-1"/>',
  file: '<path d="M9 1.8H4.2a1 1 0 0 0-1 1v10.4a1 1 0 0 0 1 1h7.6a1 1 0 0 0 1-1V5.6z"/><path d="M9 1.8v3.8h3.8"/>',
  paperclip: '<path d="M13 7.4 8 12.4a3 3 0 0 1-4.3-4.3l5.2-5.2a2 2 0 0 1 2.9 2.9L6.6 11a1 1 0 0 1-1.4-1.4l4.6-4.6"/>',
  download: '<path d="M8 2.5v8M4.8 7.4 8 10.6l3.2-3.2M3 13.5h10"/>',
};

export function icon(name, cls = "") {
  const body = PATHS[name] || "";
  return `<svg class="svg-icon ${cls}" viewBox="0 0 16 16" width="16" height="16" fill="none" ` +
    `stroke="currentColor" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round" ` +
    `aria-hidden="true" focusable="false">${body}</svg>`;
}

/** Fill every `<span data-icon="name">` placeholder under root. */
export function hydrateIcons(root = document) {
  for (const el of root.querySelectorAll("[data-icon]")) {
    if (!el.firstChild) el.innerHTML = icon(el.dataset.icon);
  }
}
