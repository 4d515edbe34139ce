// Toasts (polite, in a live region) and one-off announcements for screen readers.

import { icon } from "./icons.js";

const DEFAULT_MS = 6000;

/**
 * Show a toast. kind: "info" | "error" | "warning". action: {label, run} adds a button.
 * Returns a function that dismisses it.
 */
export function toast(message, { kind = "info", action = null, timeout = DEFAULT_MS } = {}) {
  const host = document.getElementById("toasts");
  const el = document.createElement("div");
  el.className = `toast toast-${kind}`;
  const mark = kind === "error" ? icon("error") : kind === "warning" ? icon("warning") : "";
  el.innerHTML = `${mark}<span class="toast-text"></span>`;
  el.querySelector(".toast-text").textContent = message;
  let timer = null;
  const dismiss = () => {
    clearTimeout(timer);
    el.remove();
  };
  if (action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "toast-action";
    b.textContent = action.label;
    b.addEventListener("click", () => {
      dismiss();
      action.run();
    });
    el.append(b);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "toast-close";
  close.setAttribute("aria-label", "Dismiss");
  close.innerHTML = icon("close");
  close.addEventListener("click", dismiss);
  el.append(close);
  host.append(el);
  const arm = () => {
    clearTimeout(timer);
    if (timeout) timer = setTimeout(dismiss, timeout);
  };
  el.addEventListener("mouseenter", () => clearTimeout(timer));
  el.addEventListener("mouseleave", arm);
  arm();
  return dismiss;
}

/** Say something to assistive technology without showing it. */
export function announce(message) {
  const el = document.getElementById("announcer");
  el.textContent = "";
  requestAnimationFrame(() => { el.textContent = message; });
}
