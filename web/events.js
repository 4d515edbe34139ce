// The engine's event stream (WS /events). Events are invalidation hints (spec 05 §2): the UI
// re-queries what they name. On reconnect we pass ?since=<last event_id> so the engine replays
// what we missed, and we also ask the app to re-query everything on screen, as the spec asks.
// The session cookie outlives an engine restart (it holds the home's session secret), so after
// a restart the stream simply reconnects: "Reconnecting…", then "Live" and a full re-query.

const MIN_DELAY_MS = 250;
const MAX_DELAY_MS = 5000;

const taps = new Set();

/** Also call fn(ev) for every event, before the app's own handler (shell modules that must see
 * events the app hands to another module first, e.g. blob events for "Fetching files · 2").
 * Returns a function that removes it. */
export function onAnyEvent(fn) {
  taps.add(fn);
  return () => taps.delete(fn);
}

export class EventStream {
  /**
   * @param {object} handlers
   * @param {(ev: object) => void} handlers.onEvent  every change event
   * @param {(reason: string) => void} handlers.onResync  re-query everything
   * @param {(state: "connecting"|"live"|"reconnecting") => void} handlers.onStatus
   * @param {() => void} [handlers.onFailure]  a connection attempt failed or dropped (the app
   *   probes the API: a session the engine no longer knows, e.g. its home's session secret was
   *   deleted, shows as a 401)
   */
  constructor({ onEvent, onResync, onStatus, onFailure = () => {} }) {
    this.onEvent = onEvent;
    this.onFailure = onFailure;
    this.onResync = onResync;
    this.onStatus = onStatus;
    this.lastId = null;
    this.workspaceId = null;
    this.ws = null;
    this.delay = MIN_DELAY_MS;
    this.everConnected = false;
    this.dropped = false;
    this.resynced = false;
    this.stopped = false;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
  }

  connect() {
    const url = new URL("/events", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    if (this.lastId !== null) url.searchParams.set("since", String(this.lastId));
    this.onStatus(this.everConnected ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (msg) => this.handle(msg.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (this.everConnected) this.dropped = true;
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    this.onStatus(this.everConnected ? "reconnecting" : "connecting");
    this.onFailure();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(MAX_DELAY_MS, this.delay * 2);
  }

  handle(raw) {
    let ev;
    try {
      ev = JSON.parse(raw);
    } catch {
      return;
    }
    if (ev.type === "hello") {
      this.delay = MIN_DELAY_MS;
      const restarted = this.lastId !== null && ev.event_id < this.lastId;
      const otherWorkspace = this.workspaceId !== null && ev.workspace_id !== this.workspaceId;
      this.workspaceId = ev.workspace_id;
      const wasDropped = this.dropped;
      this.everConnected = true;
      this.dropped = false;
      this.onStatus("live");
      if (this.lastId === null || restarted) this.lastId = ev.event_id;
      // a restarted engine answers an old `since` with `resync` right after hello: one
      // re-query covers both
      this.resynced = wasDropped || restarted || otherWorkspace;
      if (this.resynced) this.onResync(restarted ? "engine restarted" : "reconnected");
      return;
    }
    if (typeof ev.event_id === "number") this.lastId = Math.max(this.lastId ?? 0, ev.event_id);
    const justResynced = this.resynced;
    this.resynced = false;
    if (ev.type === "resync") {
      if (!justResynced) this.onResync("resync");
      return;
    }
    for (const fn of taps) {
      try {
        fn(ev);
      } catch (err) {
        console.error(err); // a shell module's bug must not stop the app's own handling
      }
    }
    if (ev.type === "workspace_opened") this.workspaceId = ev.workspace_id ?? this.workspaceId;
    this.onEvent(ev);
  }
}
