// The engine's event stream (WS /events). Events are invalidation hints (spec 05 §2): the UI
// re-queries what they name. On reconnect we pass ?since=<last event_id> so the engine replays
// what we missed, and we also ask the app to re-query everything on screen, as the spec asks.

const MIN_DELAY_MS = 250;
const MAX_DELAY_MS = 5000;

export class EventStream {
  /**
   * @param {object} handlers
   * @param {(ev: object) => void} handlers.onEvent  every change event
   * @param {(reason: string) => void} handlers.onResync  re-query everything
   * @param {(state: "connecting"|"live"|"reconnecting") => void} handlers.onStatus
   * @param {() => void} [handlers.onFailure]  a connection attempt failed or dropped (the app
   *   probes the API: a restarted engine has a new launch token, which a 401 reveals)
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
      if (wasDropped || restarted || otherWorkspace) {
        this.onResync(restarted ? "engine restarted" : "reconnected");
      }
      return;
    }
    if (typeof ev.event_id === "number") this.lastId = Math.max(this.lastId ?? 0, ev.event_id);
    if (ev.type === "resync") {
      this.onResync("resync");
      return;
    }
    if (ev.type === "workspace_opened") this.workspaceId = ev.workspace_id ?? this.workspaceId;
    this.onEvent(ev);
  }
}
