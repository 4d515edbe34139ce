// Thin wrapper over the engine's JSON API (spec 05 §5).
// Every call returns the decoded JSON on success or throws an ApiError {code, message, status}.

export class ApiError extends Error {
  constructor(code, message, status = 0, details = {}) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

const listeners = { unauthorized: [] };

/** Call fn(error) whenever a request is refused for lack of the launch token (401). */
export function onUnauthorized(fn) {
  listeners.unauthorized.push(fn);
}

export async function call(method, path, { body, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch {
    throw new ApiError("network", "Can't reach the engine. Is `openprod serve` still running?");
  }
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const e = data && data.error ? data.error : {};
    const err = new ApiError(e.code || `http_${resp.status}`,
      e.message || `The engine answered ${resp.status} ${resp.statusText}`,
      resp.status, e.details || {});
    if (resp.status === 401) for (const fn of listeners.unauthorized) fn(err);
    throw err;
  }
  return data;
}

export const get = (path, query) => call("GET", path, { query });
export const post = (path, body) => call("POST", path, { body });
export const del = (path, body) => call("DELETE", path, { body });
