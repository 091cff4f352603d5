/**
 * roomcast.js: the browser client for roomcast's plain WebSocket (`/ws`, `roomcast.v1`) and
 * Server-Sent Events (`/sse`), served by the server at `/roomcast.js`. No dependencies, no
 * build step. It shares the Python client's semantics (docs/client.md): states, backoff,
 * rooms resumed from their last position, listener sets, a change batcher, pause and close.
 * The wire format is docs/protocol.md.
 *
 *   import {RoomcastClient} from "https://rt.example/roomcast.js";
 *   const client = new RoomcastClient("https://rt.example", {token: () => getToken()});
 *   client.on("message", (data, meta) => show(meta.room, data));
 *   client.onSnapshot((room, snapshot) => replace(room.room, snapshot));
 *   const lobby = client.subscribe("chat:lobby");   // before connect: SSE opens one stream for all
 *   await client.connect();
 *   await lobby;
 */

/** A failed request, or why a client stopped; `code` is the protocol's error code. */
export class RoomcastError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RoomcastError";
    this.code = code;
  }
}

const closedError = () => new RoomcastError("closed", "the client is closed");

/** Calls application code: what throws is logged (with `label`) and the caller carries on. */
async function guard(label, fn, ...args) {
  try {
    await fn(...args);
  } catch (err) {
    console.error(`roomcast: ${label} failed`, err);
  }
}

/**
 * Reconnect delays: exponential with full jitter (a uniform draw over the whole range, so a
 * crowd dropped by one restart spreads out), never below initial/4 (a server that refuses at
 * once is never hit by a tight loop). Reset only after a connection proved stable.
 */
class Backoff {
  constructor(initial, max) {
    Object.assign(this, {initial, max, upper: initial});
  }
  next() {
    const floor = this.initial / 4, delay = floor + Math.random() * (this.upper - floor);
    this.upper = Math.min(this.max, this.upper * 2);
    return delay;
  }
  reset() {
    this.upper = this.initial;
  }
}

/**
 * Coalesces fine-grained changes into few batches, as the Python `ChangeBatcher`: per key the
 * last change wins (a delete beats an earlier update; batch order is the order of each key's
 * last change); a batch goes `debounce` ms after the last change, at most `window` ms and
 * never later than `maxWait` ms after the first pending one; one batch in the handler at a
 * time (what arrives meanwhile waits for the next batch).
 */
export class ChangeBatcher {
  constructor(handler, {debounce = 500, window = 5000, maxWait = 10000} = {}) {
    Object.assign(this, {handler, debounce, window, maxWait, held: false, closed: false});
    this._pending = new Map();
    this._first = this._last = 0;
    this._timer = this._running = null;
  }
  /** How many keys have a change waiting. */
  get size() {
    return this._pending.size;
  }
  /** Record a change; `"delete"` is the one kind with a meaning here. */
  add(key, kind, data = null) {
    if (this.closed) return;
    const now = performance.now();
    if (!this._pending.size) this._first = now;
    this._pending.delete(key); // re-inserted at the end: the order of last changes
    this._pending.set(key, {key, kind, data});
    this._last = now;
    this._schedule();
  }
  /** Hand over what is pending now (after a batch in progress); resolves once handled. */
  async flush() {
    while (this._running) await this._running;
    if (!this.closed && this._pending.size) await this._hand();
  }
  /** Keep changes, hand nothing over until `release()` (the client holds while paused). */
  hold() {
    this.held = true;
  }
  release() {
    this.held = false;
    this._schedule();
  }
  /** Drop what is pending and stop for good; returns how many changes were dropped. */
  close() {
    const dropped = this._pending.size;
    this.closed = true;
    this._pending.clear();
    clearTimeout(this._timer);
    return dropped;
  }
  _schedule() {
    if (this._timer || this._running || this.held || this.closed || !this._pending.size) return;
    const due = Math.min(this._last + this.debounce, this._first + this.window, this._first + this.maxWait);
    // Later changes only move the due time later: waking at this one and asking again is never late.
    this._timer = setTimeout(() => {
      this._timer = null;
      const late = this._running || this.held || this.closed || !this._pending.size;
      if (!late) performance.now() + 1 < due ? this._schedule() : this._hand();
    }, Math.max(0, due - performance.now()));
  }
  async _hand() {
    const batch = [...this._pending.values()];
    this._pending.clear();
    await (this._running = guard(`batch handler (${batch.length} changes)`, this.handler, batch));
    this._running = null;
    this._schedule(); // a batch that became due meanwhile goes at once
  }
}

const OPEN_PING = "roomcast.js:open";

/** One connection attempt; `onEnd` is called once, with {kind: retry | refused | stop | reopen, reason}. */
class Link {
  _end(outcome) {
    if (!this.ended) (this.ended = true), this.onEnd(outcome);
  }
}

class WsLink extends Link {
  constructor(url) {
    super();
    Object.assign(this, {url, opened: false});
  }
  start() {
    const ws = (this.ws = new WebSocket(this.url, "roomcast.v1"));
    // Open means "the server answered": a ping round trip. A browser's handshake with a refused
    // token is accepted and closed at once with 1008 and the reason (the browser would hide a
    // 401), so that close arrives before this answer and reads as a refusal, never as "connected".
    ws.onopen = () => ws.send(JSON.stringify({type: "ping", id: OPEN_PING}));
    ws.onmessage = (e) => {
      let message;
      try {
        message = JSON.parse(e.data);
      } catch {
        return console.warn("roomcast: dropped a message that is not JSON");
      }
      if (this.ended) return;
      if (!this.opened) {
        if (message.type === "ack" && message.id === OPEN_PING) (this.opened = true), this.onOpen();
        return;
      }
      this.onMessage(message);
    };
    ws.onclose = (e) => this._closed(e.code, e.reason);
  }
  _closed(code, reason) {
    if (this.ended) return;
    const why = reason || `code ${code}`;
    if (code === 1008) return this._end({kind: "refused", reason: why}); // "token expired", ...
    if (!this.opened) return this._end({kind: "retry", reason: "connect error"});
    if (code === 1000 || (code >= 3500 && code < 4000)) return this._end({kind: "stop", reason: `server closed: ${why}`});
    this._end({kind: "retry", reason: `transport close (${code}${reason ? " " + reason : ""})`});
  }
  send(message) {
    this.ws.send(JSON.stringify(message));
  }
  abort(reason, kind = "retry") {
    this._end({kind, reason});
    this.ws.onclose = this.ws.onmessage = null;
    this.ws.close(1000);
  }
}

/**
 * One SSE stream, read with fetch() rather than EventSource: fetch shows the status (401/403
 * refused, 204 finished), sees every event name without a listener per name, and leaves
 * reconnecting to us, so each new URL carries a fresh token and the current rooms.
 */
class SseLink extends Link {
  constructor(url) {
    super();
    Object.assign(this, {url, lastError: null, ctrl: new AbortController()});
  }
  async start() {
    let res;
    try {
      res = await fetch(this.url, {signal: this.ctrl.signal, cache: "no-store", headers: {Accept: "text/event-stream"}});
    } catch (err) {
      return this._end({kind: "retry", reason: `connect error: ${err.message}`});
    }
    if (res.status === 200) {
      this.onOpen();
      await readEvents(res.body, (ev) => this._event(ev)).catch(() => {}); // aborted, or the network dropped
      return this._end(this.lastError ?? {kind: "retry", reason: "transport close"});
    }
    const message = await errorMessage(res);
    if (res.status === 204) return this._end({kind: "stop", reason: "finished: every room is terminal"});
    if (res.status === 401 || res.status === 403) return this._end({kind: "refused", reason: message});
    if (res.status === 400) return this._end({kind: "stop", reason: `bad request: ${message}`});
    this._end({kind: "retry", reason: `connect error: HTTP ${res.status}`});
  }
  _event(ev) {
    if (ev.event !== "error") return this.ended || this.onMessage(ev);
    const {message, reconnect} = JSON.parse(ev.data); // why the server is about to end the stream
    const kind = reconnect ? "retry" : message === "token expired" ? "refused" : "stop";
    this.lastError = {kind, reason: kind === "stop" ? `server closed: ${message}` : message};
  }
  abort(reason, kind = "retry") {
    this._end({kind, reason});
    this.ctrl.abort();
  }
}

/** Parses an event stream by the WHATWG rules: CR, LF or CRLF; `:` comments; `data` lines joined. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", data = [], event = "", id = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length; // a "\n" may follow
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut);
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent({event: event || "message", data: data.join("\n"), id});
        (data = []), (event = ""), (id = null);
      } else if (line[0] !== ":") {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + (line[colon + 1] === " " ? 2 : 1));
        if (field === "data") data.push(text);
        else if (field === "event") event = text;
        else if (field === "id") id = text;
      }
    }
  }
}

async function errorMessage(res) {
  const body = await res.json().catch(() => null);
  return body?.error?.message ?? body?.message ?? `HTTP ${res.status}`;
}

/** The message of a 401 from /sse for this token, else null; a stream it opens is dropped at once. */
/** The SSE cursor (docs/protocol.md): base64url, unpadded, of {"room": [epoch, offset], ...}. */
function decodeCursor(id) {
  try {
    const b64 = id.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64 + "===".slice((b64.length + 3) % 4)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function encodeCursor(rooms) {
  const known = [...rooms.values()].filter((s) => s.epoch !== null).sort((a, b) => (a.room < b.room ? -1 : 1));
  if (!known.length) return null;
  const json = JSON.stringify(Object.fromEntries(known.map((s) => [s.room, [s.epoch, s.offset]])));
  const binary = String.fromCharCode(...new TextEncoder().encode(json));
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * A roomcast client over `/ws` (default) or `/sse`. Nothing happens until `connect()`.
 * State is `client.state`: disconnected, connecting, connected, reconnecting or closed.
 *
 * @param {string | URL} [baseUrl] the server, e.g. "https://rt.example" (default: where this module came from)
 * @param {object} [options]
 * @param {"websocket" | "sse"} [options.transport] "websocket"
 * @param {string | (() => string | Promise<string>)} [options.token] a JWT, or a callable asked before every connect
 * @param {number} [options.backoffInitial] ms, 500 @param {number} [options.backoffMax] ms, 30000
 * @param {number} [options.stableAfter] ms connected before the delays start small again, 10000
 * @param {number} [options.connectTimeout] ms per attempt, 10000 @param {number} [options.ackTimeout] ms, 10000
 * @param {number} [options.offlineLimit] emits kept while not connected, 1000
 */
export class RoomcastClient {
  constructor(baseUrl, options = {}) {
    this.baseUrl = new URL(baseUrl ?? new URL(".", import.meta.url));
    this.options = {transport: "websocket", token: null, backoffInitial: 500, backoffMax: 30000, stableAfter: 10000,
      connectTimeout: 10000, ackTimeout: 10000, offlineLimit: 1000, ...options};
    if (!["websocket", "sse"].includes(this.options.transport)) throw new TypeError("transport: websocket or sse");
    this.state = "disconnected";
    this._backoff = new Backoff(this.options.backoffInitial, this.options.backoffMax);
    this._stateFns = new Set();
    this._snapshotFns = new Set();
    this._sets = new Map([["default", new Map()]]); // set -> event -> handlers (replaced, never mutated)
    this._active = "default";
    this._rooms = new Map(); // room -> {room, epoch, offset, recovered}
    this._waiters = new Map(); // room -> [{resolve, reject}] of subscribe() calls
    this._requests = new Map(); // id -> {resolve, reject, timer, message} or {room} for a subscribe
    this._outbox = []; // emits waiting for a connection
    this._batchers = new Set();
    this._queue = []; // events and snapshots waiting for their turn
    this._nextId = 1;
    this._gen = 0; // bumped by pause/close/stop: a loop of an older generation quits
    this._link = this._wake = this._pauseTimer = null;
    this._paused = this._waitingForRoom = this._reopening = false;
  }

  /** Listen to state changes: `fn({old, new, reason})`, synchronously. Returns a remover. */
  onState(fn) {
    this._stateFns.add(fn);
    return () => this._stateFns.delete(fn);
  }

  /**
   * Connect, and reconnect whenever the connection is lost. Resolves once connected; rejects
   * with the reason when the client stops (a refusal, a final close). Over SSE it waits for a room.
   */
  connect() {
    if (this.state === "closed") return Promise.reject(closedError());
    if (this._paused || this._pauseTimer) this.resume();
    if (this.state === "disconnected") this._start("connect");
    return this.waitConnected(Infinity);
  }

  /** Resolves when connected; rejects when the client stops or closes, or after `timeoutMs`. */
  waitConnected(timeoutMs = 10000) {
    if (this.state === "connected") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      const timer = timeoutMs < Infinity && setTimeout(() => done(new RoomcastError("timeout", "not connected")), timeoutMs);
      const done = (err) => (clearTimeout(timer), off(), err ? reject(err) : resolve());
      const off = this.onState((c) => {
        if (c.new === "connected") done();
        else if (c.new === "disconnected" || c.new === "closed") done(new RoomcastError(c.new, c.reason));
      });
    });
  }

  /**
   * Follow a room: resolves `{room, epoch, offset, recovered}` once the server answered (after
   * the next connect if not connected). The room is resumed from its position after every
   * reconnect. Refused (no grant, too many rooms): rejects with a RoomcastError, room dropped.
   */
  subscribe(room) {
    this._open();
    const known = this._rooms.get(room);
    if (known?.epoch != null) return Promise.resolve({...known});
    return new Promise((resolve, reject) => {
      this._waiters.set(room, [...(this._waiters.get(room) ?? []), {resolve, reject}]);
      if (known) return;
      this._rooms.set(room, {room, epoch: null, offset: null, recovered: false});
      if (this._sse) this._reopen();
      else if (this.state === "connected") this._sendSubscribe(room);
    });
  }

  /** Stop following a room; its later events are dropped. */
  async unsubscribe(room) {
    this._open();
    if (!this._rooms.delete(room)) return;
    this._answer(room, new RoomcastError("unsubscribed", `unsubscribed from ${room}`));
    if (this._sse) this._reopen();
    else if (this.state === "connected") await this._request({type: "unsubscribe", room});
  }

  /** A room's current state `{room, epoch, offset, recovered}`, or undefined. */
  room(name) {
    const state = this._rooms.get(name);
    return state && {...state};
  }

  get rooms() {
    return [...this._rooms.values()].map((s) => ({...s}));
  }

  /**
   * `fn(roomState, snapshot)` on a first subscribe and on every reset (`recovered: false`):
   * replace what you hold for the room. Runs in event order. A recovery calls nothing: the
   * missed events simply arrive. Returns a remover.
   */
  onSnapshot(fn) {
    this._snapshotFns.add(fn);
    return () => this._snapshotFns.delete(fn);
  }

  /**
   * Handle `event` with `handler(data, {event, room, offset})` (no room for an event sent to
   * this connection alone), in listener set `set`. Handlers run one event at a time, in order;
   * an async one is awaited before the next; one that throws is logged, the rest go on.
   */
  on(event, handler, {set = "default"} = {}) {
    if (typeof handler !== "function") throw new TypeError(`the handler of ${event} must be a function`);
    const handlers = this._set(set);
    handlers.set(event, [...(handlers.get(event) ?? []), handler]);
    return handler;
  }

  /** Remove `handler` (or every handler of `event`); a dispatch in progress keeps its list. */
  off(event, handler, {set = "default"} = {}) {
    const handlers = this._set(set), kept = handler ? (handlers.get(event) ?? []).filter((h) => h !== handler) : [];
    kept.length ? handlers.set(event, kept) : handlers.delete(event);
  }

  /** Switch the active listener set, atomically: an event goes to the set active when its turn comes. */
  use(set) {
    this._set(set);
    this._active = set;
  }

  /**
   * Send an event to the server's handler (`/ws` only). With `ack`, resolves with its answer or
   * rejects (RoomcastError: not_found, internal, timeout, closed). Kept while not connected.
   */
  emit(event, data = null, {ack = false, timeout = this.options.ackTimeout} = {}) {
    this._wsOnly("emit");
    if (ack) return this._request({type: "emit", event, data}, timeout);
    this._send({type: "emit", event, data});
    return Promise.resolve();
  }

  /** Publish to a room, if the token grants it (`/ws` only); resolves `{room, epoch, offset}`. */
  publish(room, event, data = null, {timeout = this.options.ackTimeout} = {}) {
    this._wsOnly("publish");
    return this._request({type: "publish", room, event, data}, timeout);
  }

  /** Hand the server a fresh token from the token callable before the old one expires (`/ws` only). */
  async refreshToken() {
    this._wsOnly("refreshToken");
    return this._request({type: "refresh", token: await this._token()});
  }

  /** A `ChangeBatcher` owned by the client: held while paused, closed (pending dropped) on close. */
  batcher(handler, options) {
    this._open();
    const batcher = new ChangeBatcher(handler, options);
    this._batchers.add(batcher);
    return batcher;
  }

  /** Going to the background: after `graceMs`, disconnect (reason "paused") and hold the batchers. */
  pause(graceMs = 0) {
    this._open();
    clearTimeout(this._pauseTimer);
    this._pauseTimer = setTimeout(() => {
      (this._pauseTimer = null), (this._paused = true);
      this._batchers.forEach((b) => b.hold());
      this._stop("disconnected", "paused");
    }, graceMs);
  }

  /** Back: within the grace nothing dropped; after it, reconnect (delays reset) and recover every room. */
  resume() {
    this._open();
    if (this._pauseTimer) return clearTimeout(this._pauseTimer), (this._pauseTimer = null);
    if (!this._paused) return;
    this._paused = false;
    this._batchers.forEach((b) => b.release());
    this._backoff.reset();
    if (this.state === "disconnected") this._start("resume");
  }

  /** Disconnect for good (state closed): batchers drop their pending changes, requests fail. */
  close() {
    if (this.state === "closed") return;
    clearTimeout(this._pauseTimer);
    this._batchers.forEach((b) => b.close());
    this._waiters.forEach((_, room) => this._answer(room, closedError()));
    this._outbox = [];
    this._stop("closed", "closed");
    this._requests.forEach((r) => (clearTimeout(r.timer), r.reject?.(closedError())));
    this._requests.clear();
  }

  // -- the connection loop ------------------------------------------------------------
  get _sse() {
    return this.options.transport === "sse";
  }

  _start(reason) {
    this._loop(++this._gen, reason).catch((err) => console.error("roomcast: the connection loop failed", err));
  }

  /** Attempt, wait for the end, decide: retry after a delay, try a new token, or stop. */
  async _loop(gen, reason) {
    let refused = null; // the token the server just refused, and why
    while (gen === this._gen) {
      this._setState("connecting", reason);
      if (this._sse && !this._rooms.size) {
        this._waitingForRoom = true; // a stream needs a room: subscribe() wakes us
        await this._sleep(Infinity, gen);
        this._waitingForRoom = false;
      }
      const token = await this._token().catch((err) => ({error: `token error: ${err.message}`}));
      if (gen !== this._gen) return;
      if (refused && token === refused.token) {
        return this._stop("disconnected", `refused: ${refused.reason} (the token callable returned the same token)`);
      }
      const outcome = token?.error ? {kind: "retry", reason: token.error} : await this._attempt(token, gen);
      if (gen !== this._gen) return;
      if (outcome.kind === "reopen") (reason = outcome.reason), (refused = null);
      else if (outcome.kind === "stop") return this._stop("disconnected", outcome.reason);
      else if (outcome.kind === "refused" && typeof this.options.token !== "function") {
        return this._stop("disconnected", `refused: ${outcome.reason}`);
      } else {
        refused = outcome.kind === "refused" ? {token, reason: outcome.reason} : null;
        this._setState("reconnecting", refused ? `refused: ${outcome.reason}` : outcome.reason);
        await this._sleep(this._backoff.next(), gen);
        reason = "reconnect";
      }
    }
  }

  /** One connection, from opening to its end; resolves with the outcome. */
  _attempt(token, gen) {
    return new Promise((done) => {
      const auth = token ? {token} : {};
      const link = (this._link = this._sse
        ? new SseLink(this._sseUrl(auth))
        : new WsLink(this._url("/ws", auth)));
      let stable = null;
      const timeout = setTimeout(() => link.abort("connect timeout"), this.options.connectTimeout);
      link.onOpen = () => {
        clearTimeout(timeout);
        if (gen !== this._gen) return link.abort("stale", "stop");
        stable = setTimeout(() => this._backoff.reset(), this.options.stableAfter);
        this._setState("connected", `connected over ${this.options.transport}`);
        this._connected();
      };
      link.onMessage = (message) => (this._sse ? this._onSse(message) : this._onWs(message));
      link.onEnd = (outcome) => {
        clearTimeout(timeout), clearTimeout(stable);
        if (this._link === link) this._link = null;
        this._requests.forEach((r, id) => {
          if (this._outbox.includes(r.message)) return; // never sent: it waits for the next connection
          clearTimeout(r.timer), this._requests.delete(id); // a subscribe is sent again on the next connect
          r.reject?.(new RoomcastError("closed", "the connection was lost before the answer"));
        });
        done(outcome);
      };
      link.start();
    });
  }

  _connected() {
    // SSE: the rooms the cursor named resume, unless a `reset` event says otherwise.
    if (this._sse) return this._rooms.forEach((s) => (s.recovered = s.epoch !== null));
    for (const room of this._rooms.keys()) this._sendSubscribe(room);
    const outbox = this._outbox;
    this._outbox = [];
    outbox.forEach((m) => this._link.send(m));
  }

  _stop(state, reason) {
    this._gen++;
    this._wake?.();
    this._link?.abort(reason, "stop");
    this._setState(state, reason);
  }

  _sleep(ms, gen) {
    return new Promise((resolve) => {
      const timer = ms < Infinity && setTimeout(resolve, ms);
      this._wake = () => (clearTimeout(timer), resolve());
    }).finally(() => gen === this._gen && (this._wake = null));
  }

  /** SSE cannot change rooms in-band: open a new stream with every room and the cursor (once a tick). */
  _reopen() {
    if (this._reopening) return;
    this._reopening = true;
    queueMicrotask(() => {
      this._reopening = false;
      if (this._link) this._link.abort("rooms changed", "reopen");
      else if (this._waitingForRoom) this._wake?.();
    });
  }

  async _token() {
    const token = this.options.token;
    return typeof token === "function" ? await token() : token;
  }

  /** The stream of every room, from the cursor; named events whatever the server's default format. */
  _sseUrl(auth) {
    const rooms = [...this._rooms.keys()];
    return this._url("/sse", {room: rooms, format: "events", last_event_id: encodeCursor(this._rooms), ...auth});
  }

  _url(path, params) {
    const url = new URL(this.baseUrl);
    if (path === "/ws") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.pathname = url.pathname.replace(/\/+$/, "") + path;
    for (const [name, value] of Object.entries(params)) {
      for (const v of [value].flat()) if (v != null) url.searchParams.append(name, v);
    }
    return url.href;
  }

  _setState(state, reason) {
    if (state === this.state || this.state === "closed") return;
    const change = {old: this.state, new: state, reason};
    this.state = state;
    [...this._stateFns].forEach((fn) => guard("state listener", fn, change));
  }

  // -- messages in -------------------------------------------------------------------
  _onWs(msg) {
    if (msg.type === "event") {
      const state = msg.room === undefined ? null : this._rooms.get(msg.room);
      if (state === undefined) return; // a room no longer followed
      if (state && state.offset !== null && msg.offset <= state.offset) return; // applied, or in the snapshot
      if (state) state.offset = msg.offset;
      return this._dispatch(msg.event, msg.data, {event: msg.event, room: msg.room, offset: msg.offset});
    }
    const request = this._requests.get(msg.id);
    if (!request) return msg.type === "error" && console.warn(`roomcast: ${msg.code}: ${msg.message}`);
    this._requests.delete(msg.id);
    clearTimeout(request.timer);
    if (request.room !== undefined) return this._subscribed(request.room, msg);
    msg.type === "error" ? request.reject(new RoomcastError(msg.code, msg.message)) : request.resolve(msg.data);
  }

  _subscribed(room, msg) {
    const state = this._rooms.get(room);
    if (state && msg.type === "error") {
      this._rooms.delete(room);
      return this._answer(room, new RoomcastError(msg.code, msg.message));
    }
    // Recovered: the missed events follow at once and move the offset themselves.
    if (state) Object.assign(state, {epoch: msg.epoch, recovered: msg.recovered}, msg.recovered ? {} : {offset: msg.offset});
    if (state) this._settle(state, msg.snapshot ?? null, msg.offset);
  }

  _onSse(ev) {
    if (ev.event === "snapshot" || ev.event === "reset") {
      const body = JSON.parse(ev.data), state = this._rooms.get(body.room);
      if (state) Object.assign(state, {epoch: body.epoch, offset: body.offset, recovered: false});
      return state && this._settle(state, body.snapshot ?? null, body.offset);
    }
    let meta = {event: ev.event};
    // The cursor holds every room's position: the room whose position moved is the event's.
    for (const [room, [epoch, offset]] of Object.entries((ev.id && decodeCursor(ev.id)) || {})) {
      const state = this._rooms.get(room);
      if (state && (state.epoch !== epoch || state.offset !== offset)) {
        Object.assign(state, {epoch, offset});
        meta = {event: ev.event, room, offset};
      }
    }
    let data = ev.data;
    try {
      data = JSON.parse(data);
    } catch {} // not JSON: an application's own `emit` of plain text
    this._dispatch(ev.event, data, meta);
  }

  _settle(state, snapshot, offset) {
    const copy = () => ({...state, offset});
    if (!state.recovered) this._snapshotFns.forEach((fn) => this._enqueue("snapshot", () => [[fn, [copy(), snapshot]]]));
    this._answer(state.room, null, copy());
  }

  _dispatch(event, data, meta) {
    this._enqueue(`event "${event}"`, () => {
      const handlers = this._sets.get(this._active).get(event); // the set active now that its turn came
      return (handlers ?? []).map((h) => [h, [data, meta]]);
    });
  }

  /** One event at a time, in arrival order: each job names its handlers when its turn comes. */
  _enqueue(label, job) {
    if (this._queue.push([label, job]) === 1) this._drain();
  }

  async _drain() {
    while (this._queue.length) {
      const [label, job] = this._queue[0];
      for (const [handler, args] of job()) await guard(`handler for ${label}`, handler, ...args);
      this._queue.shift();
    }
  }

  // -- messages out ------------------------------------------------------------------
  _sendSubscribe(room) {
    const id = this._nextId++, state = this._rooms.get(room);
    this._requests.set(id, {room});
    const position = state.epoch !== null ? {epoch: state.epoch, offset: state.offset} : {};
    this._link.send({type: "subscribe", id, room, ...position});
  }

  _request(message, timeout = this.options.ackTimeout) {
    return new Promise((resolve, reject) => {
      const id = (message.id = this._nextId++);
      const timer = setTimeout(() => {
        this._requests.delete(id);
        this._outbox = this._outbox.filter((m) => m !== message); // expired while waiting: never sent
        reject(new RoomcastError("timeout", `no answer to ${message.type} within ${timeout} ms`));
      }, timeout);
      this._requests.set(id, {resolve, reject, timer, message});
      try {
        this._send(message);
      } catch (err) {
        this._requests.delete(id), clearTimeout(timer), reject(err);
      }
    });
  }

  _send(message) {
    if (this.state === "connected" && this._link) return this._link.send(message);
    if (this._outbox.length >= this.options.offlineLimit) throw new RoomcastError("offline", "offline buffer full");
    this._outbox.push(message);
  }

  _wsOnly(what) {
    this._open();
    if (this._sse) throw new RoomcastError("unsupported", `${what} needs the websocket transport: an SSE stream only receives`);
  }

  _open() {
    if (this.state === "closed") throw closedError();
  }

  _set(name) {
    if (!this._sets.has(name)) this._sets.set(name, new Map());
    return this._sets.get(name);
  }

  /** Settles a room's pending subscribe() calls: rejects them with `err`, or resolves them with `value`. */
  _answer(room, err, value) {
    (this._waiters.get(room) ?? []).forEach((w) => (err ? w.reject(err) : w.resolve({...value})));
    this._waiters.delete(room);
  }
}
