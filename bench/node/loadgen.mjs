// The load generator: one process driving any Socket.IO v5 server over plain WebSockets.
//
//   node bench/node/loadgen.mjs '{"scenario": "fanout", "port": 3000, ...}'
//
// It speaks the Engine.IO v4 / Socket.IO v5 wire format over its own minimal WebSocket client
// on raw TCP (no client library), counts events by their first two bytes and parses JSON only where a figure needs
// it (latency), so it stays well below one core while the server under test saturates its own.
// Each connection binds its own loopback source address (127.1.x.y), so repeated runs never
// run out of ephemeral ports to TIME_WAIT. With `"tls": true` every connection is TLS (wss://,
// https:// for SSE) to a server whose certificate is not checked (the bench makes its own).
//
// It reports on stdout, one JSON object per line, and waits for the orchestrator (bench/run.py)
// on stdin between phases, so the orchestrator can read the server's CPU and memory from /proc
// at exactly the phase boundaries:
//
//   fanout   {subs, messages, window, payload, room}  ready -> "go" -> done {seconds, delivered}
//   latency  {subs, rate, seconds, warmup, payload}   ready -> "go" -> done {p50_ms, p99_ms, delivered, ...}
//   conns    {targets: [n...], warm}                  at {n} -> "go" -> ... -> end
//
// With `"raw": true` (the uWebSockets ceiling, bench/uws) a client upgrades `/` to a plain
// WebSocket and is connected at the 101: no Engine.IO handshake, no pings, no `40`; the
// Socket.IO packets (`42...` events, `43...` acks) on it are the same bytes as above.
import { performance } from "node:perf_hooks";
import readline from "node:readline";
import net from "node:net";
import tls from "node:tls";

const spec = JSON.parse(process.argv[2] ?? "{}");
const url = `ws://127.0.0.1:${spec.port}${spec.path ?? "/socket.io/"}?EIO=4&transport=websocket`;
const CONNECT_CONCURRENCY = spec.concurrency ?? 64;
// Several nodes of one server (roomcast on Redis): connections go to each port in turn.
const PORTS = spec.ports ?? [spec.port];
let clientCounter = 0;
const TIMEOUT_MS = (spec.timeout ?? 120) * 1000;

function report(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

function fail(message) {
  report({ phase: "error", message });
  process.exit(1);
}

// -- orchestrator lines -------------------------------------------------------------------
const lines = [];
const lineWaiters = [];
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const waiter = lineWaiters.shift();
  if (waiter) waiter(line.trim());
  else lines.push(line.trim());
});
function nextLine() {
  if (lines.length) return Promise.resolve(lines.shift());
  return new Promise((resolve) => lineWaiters.push(resolve));
}
async function handOver(object) {
  report(object);
  const line = await nextLine();
  if (line === "exit") process.exit(0);
}

// -- one Socket.IO client on the raw wire -------------------------------------------------
let addressCounter = 0;
function sourceAddress() {
  const n = addressCounter++;
  return `127.1.${(n >> 8) & 255}.${(n & 255) || 1}`;
}

const CH_0 = 0x30, CH_2 = 0x32, CH_3 = 0x33, CH_4 = 0x34;
const READ_BUFFER = Buffer.allocUnsafe(1 << 18);
const OP_TEXT = 1, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10;
const HANDSHAKE = (port, path) => [
  `GET ${path}?EIO=4&transport=websocket HTTP/1.1`,
  `Host: 127.0.0.1:${port}`,
  "Upgrade: websocket",
  "Connection: Upgrade",
  "Sec-WebSocket-Key: cm9vbWNhc3QtYmVuY2gtIQ==",
  "Sec-WebSocket-Version: 13",
  "", "",
].join("\r\n");

/** A client frame: masked (as RFC 6455 requires) with an all-zero key, so no XOR pass. */
function clientFrame(opcode, payload) {
  const body = typeof payload === "string" ? Buffer.from(payload) : payload;
  const n = body.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, 0x80 | n, 0, 0, 0, 0])
    : n < 65536 ? Buffer.from([0x80 | opcode, 0x80 | 126, n >> 8, n & 255, 0, 0, 0, 0])
    : (() => { const h = Buffer.alloc(14); h[0] = 0x80 | opcode; h[1] = 0x80 | 127; h.writeBigUInt64BE(BigInt(n), 2); return h; })();
  return Buffer.concat([head, body]);
}

/**
 * One Socket.IO client on a raw TCP socket: our own minimal WebSocket framing, so counting a
 * delivered event costs a few comparisons, not a parser, a Buffer and an event per message.
 * `onEvent(buffer, start, length)` sees the text of each `42...` packet in place.
 */
class Client {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.acks = new Map();
    this.nextAck = 1;
    this.socket = null;
    this.pending = null;
    this.upgraded = false;
    this.connected = false;
    this.port = PORTS[clientCounter++ % PORTS.length];
  }

  connect() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("connect timeout")), 10_000);
      this.resolveConnect = () => { clearTimeout(timer); this.connected = true; resolve(this); };
      this.rejectConnect = (err) => { clearTimeout(timer); reject(err); };
      const socket = spec.tls
        // TLS decrypts into a Buffer per read: a 'data' event (onread is plain TCP's only)
        ? tls.connect({ host: "127.0.0.1", port: this.port, localAddress: sourceAddress(), rejectUnauthorized: false })
        : net.connect({
          host: "127.0.0.1",
          port: this.port,
          localAddress: sourceAddress(),
          // Read into one shared buffer, straight to our parser: no stream machinery, no
          // Buffer and no 'data' event per read.
          onread: { buffer: READ_BUFFER, callback: (n, buf) => { this.onData(buf.subarray(0, n)); } },
        });
      this.socket = socket;
      socket.setNoDelay(true);
      if (spec.tls) socket.on("data", (buf) => this.onData(buf));
      socket.on(spec.tls ? "secureConnect" : "connect", () => socket.write(this.handshake()));
      socket.on("error", (err) => this.rejectConnect(err));
      socket.on("close", () => {
        if (this.connected && !stopping) fail("server closed a connection mid-run");
      });
    });
  }

  handshake() {
    return HANDSHAKE(this.port, spec.path ?? "/socket.io/");
  }

  send(text) {
    this.socket.write(clientFrame(OP_TEXT, text));
  }

  emit(event, data) {
    const id = this.nextAck++;
    return new Promise((resolve) => {
      this.acks.set(id, resolve);
      this.send(`42${id}${JSON.stringify([event, data])}`);
    });
  }

  onData(chunk) {
    if (this.pending !== null) {
      chunk = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let i = 0;
    if (!this.upgraded) {
      const end = chunk.indexOf("\r\n\r\n");
      if (end < 0) { this.pending = Buffer.from(chunk); return; }
      if (chunk.toString("latin1", 0, 12) !== "HTTP/1.1 101") {
        this.rejectConnect(new Error(`upgrade refused: ${chunk.toString("latin1", 0, end)}`));
        this.socket.destroy();
        return;
      }
      this.upgraded = true;
      i = end + 4;
    }
    const len = chunk.length;
    while (len - i >= 2) {
      const opcode = chunk[i] & 0x0f;
      let size = chunk[i + 1] & 0x7f;
      let head = 2;
      if (size === 126) {
        if (len - i < 4) break;
        size = chunk.readUInt16BE(i + 2);
        head = 4;
      } else if (size === 127) {
        if (len - i < 10) break;
        size = Number(chunk.readBigUInt64BE(i + 2));
        head = 10;
      }
      if (len - i < head + size) break;
      this.onFrame(opcode, chunk, i + head, size);
      i += head + size;
    }
    if (i < len) this.pending = Buffer.from(chunk.subarray(i));  // READ_BUFFER is reused
  }

  onFrame(opcode, buf, start, size) {
    if (opcode === OP_TEXT) {
      const type = buf[start];
      if (type === CH_4) {
        const kind = buf[start + 1];
        if (kind === CH_2) this.onEvent(buf, start, size);
        else if (kind === CH_3) this.onAck(buf.toString("utf8", start, start + size));
        else if (kind === CH_0) this.resolveConnect();
        else if (kind === CH_4) this.rejectConnect(new Error(`connect refused: ${buf.toString("utf8", start, start + size)}`));
      } else if (type === CH_2) {
        this.send("3");
      } else if (type === CH_0) {
        this.send("40");
      }
    } else if (opcode === OP_PING) {
      this.socket.write(clientFrame(OP_PONG, buf.subarray(start, start + size)));
    } else if (opcode === OP_CLOSE && !stopping) {
      fail("server sent a close frame mid-run");
    }
  }

  onAck(text) {
    let end = 2;
    while (end < text.length && text.charCodeAt(end) >= 0x30 && text.charCodeAt(end) <= 0x39) end++;
    const id = Number(text.slice(2, end));
    const resolve = this.acks.get(id);
    if (resolve) {
      this.acks.delete(id);
      resolve(JSON.parse(text.slice(end)));
    }
  }
}

/**
 * A raw client: the Socket.IO packets straight on a WebSocket, connected at the upgrade (the
 * uWebSockets server sends no Engine.IO open packet and no pings).
 */
class RawClient extends Client {
  handshake() {
    return HANDSHAKE(this.port, "/").replace("/?EIO=4&transport=websocket", "/");
  }

  onData(chunk) {
    const wasUpgraded = this.upgraded;
    super.onData(chunk);
    if (!wasUpgraded && this.upgraded && !this.connected) this.resolveConnect();
  }
}

/** Whichever Socket.IO client the spec asks for: on Engine.IO, or raw. */
const socketIoClient = spec.raw ? (handler) => new RawClient(handler) : (handler) => new Client(handler);

/**
 * A roomcast.v1 client on /ws: subscribed by a `subscribe` message, counts `event` messages.
 * Only roomcast speaks it; the publisher stays a Socket.IO client (one room model).
 */
class WsClient extends Client {
  handshake() {
    return `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${this.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`
      + "Sec-WebSocket-Key: cm9vbWNhc3QtYmVuY2gtIQ==\r\nSec-WebSocket-Version: 13\r\n"
      + "Sec-WebSocket-Protocol: roomcast.v1\r\n\r\n";
  }

  onData(chunk) {
    const wasUpgraded = this.upgraded;
    super.onData(chunk);
    if (!wasUpgraded && this.upgraded && !this.connected) this.resolveConnect();
  }

  onFrame(opcode, buf, start, size) {
    if (opcode !== OP_TEXT) return super.onFrame(opcode, buf, start, size);
    // {"type":"event"... vs {"type":"snapshot"...: the 10th character tells them apart
    const c = buf[start + 9];
    if (c === 0x65 /* e */) this.onEvent(buf, start, size);
    else if (c === 0x73 /* s */ && this.subscribed) { const done = this.subscribed; this.subscribed = null; done(); }
  }

  subscribe(room) {
    return new Promise((resolve) => {
      this.subscribed = resolve;
      this.send(JSON.stringify({ type: "subscribe", id: 1, room }));
    });
  }
}

/** An SSE client on /sse?room=: subscribed once its snapshot arrives; counts `event: tick`. */
class SseClient extends Client {
  constructor(onEvent, room) {
    super(onEvent);
    this.room = room;
    this.carry = "";
  }

  handshake() {
    return `GET /sse?room=${encodeURIComponent(this.room)} HTTP/1.1\r\nHost: 127.0.0.1:${this.port}\r\n`
      + "Accept: text/event-stream\r\n\r\n";
  }

  onData(chunk) {
    let text = this.carry + chunk.toString("latin1");
    if (!this.upgraded) {
      const end = text.indexOf("\r\n\r\n");
      if (end < 0) { this.carry = text; return; }
      if (!text.startsWith("HTTP/1.1 200")) {
        this.rejectConnect(new Error(`stream refused: ${text.slice(0, end)}`));
        this.socket.destroy();
        return;
      }
      this.upgraded = true;
      text = text.slice(end + 4);
    }
    if (!this.connected && text.includes("event: snapshot\n")) this.resolveConnect();
    let at = text.indexOf("event: tick\n");
    let last = 0;
    while (at >= 0) {
      this.onEvent();
      last = at + 12;
      at = text.indexOf("event: tick\n", last);
    }
    this.carry = text.slice(Math.max(last, text.length - 11));  // a marker split across reads
  }
}

let stopping = false;

async function connectMany(count, onEvent, into = [], make = socketIoClient) {
  let next = 0;
  async function worker() {
    while (next < count) {
      next++;
      into.push(await make(onEvent).connect());
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, count) }, worker));
  return into;
}

async function joinAll(clients, room) {
  for (let i = 0; i < clients.length; i += 500) {
    const answers = await Promise.all(clients.slice(i, i + 500).map((c) => c.emit("join", { room })));
    if (answers.some((a) => a[0] !== true)) fail("join was not acknowledged with true");
  }
}

function withTimeout(promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} timed out`)), TIMEOUT_MS)),
  ]);
}

// -- scenarios ------------------------------------------------------------------------------
async function fanout() {
  const { subs, messages, window: win = 4, payload = 64, room = "bench" } = spec;
  const target = subs * messages;
  let delivered = 0;
  let finished;
  const allDelivered = new Promise((resolve) => { finished = resolve; });
  const { protocol = "socketio" } = spec;
  const count = () => { if (++delivered === target) finished(); };
  const make = protocol === "ws" ? (handler) => new WsClient(handler)
    : protocol === "sse" ? (handler) => new SseClient(handler, room)
    : socketIoClient;
  const clients = await connectMany(subs, count, [], make);
  if (protocol === "ws") {
    for (let i = 0; i < clients.length; i += 500) {
      await Promise.all(clients.slice(i, i + 500).map((c) => c.subscribe(room)));
    }
  } else if (protocol !== "sse") {
    await joinAll(clients, room);
  }
  const [publisher] = await connectMany(1, () => {});
  const body = "x".repeat(payload);

  await handOver({ phase: "ready", connections: clients.length + 1 });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  let inflight = 0;
  let acked = 0;
  let allAcked;
  const acksDone = new Promise((resolve) => { allAcked = resolve; });
  function pump() {
    while (inflight < win && sent < messages) {
      sent++;
      inflight++;
      publisher.emit("publish", { room, event: "tick", data: { seq: sent, body } }).then(() => {
        inflight--;
        if (++acked === messages) allAcked();
        pump();
      });
    }
  }
  pump();
  try {
    await withTimeout(Promise.all([allDelivered, acksDone]), "fan-out");
  } catch (err) {
    fail(`${err.message}: ${delivered} of ${target} delivered`);
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  stopping = true;
  await handOver({
    phase: "done",
    delivered,
    seconds,
    loadgen_cpu_share: (cpu.user + cpu.system) / 1e6 / seconds,
  });
}

async function latency() {
  const { subs, rate, seconds, warmup = 1, payload = 64, room = "bench" } = spec;
  const total = Math.round(rate * (seconds + warmup));
  const skip = Math.round(rate * warmup);
  const samples = new Float64Array(subs * (total - skip));
  let recorded = 0;
  let received = 0;
  let finished;
  const allDelivered = new Promise((resolve) => { finished = resolve; });
  const clients = await connectMany(subs, (buf, at, size) => {
    const now = performance.now();
    const [, body] = JSON.parse(buf.toString("utf8", at + 2, at + size));
    if (body.seq >= skip) samples[recorded++] = now - body.t;
    if (++received === subs * total) finished();
  });
  await joinAll(clients, room);
  const [publisher] = await connectMany(1, () => {});
  const filler = "x".repeat(payload);

  await handOver({ phase: "ready", connections: clients.length + 1 });
  const period = 1000 / rate;
  const start = performance.now();
  let seq = 0;
  await new Promise((resolve) => {
    function tick() {
      const now = performance.now();
      while (seq < total && start + seq * period <= now) {
        publisher.emit("publish", { room, event: "tick", data: { seq, t: performance.now(), body: filler } });
        seq++;
      }
      if (seq >= total) resolve();
      else setTimeout(tick, Math.max(0, start + seq * period - performance.now()));
    }
    tick();
  });
  try {
    await withTimeout(allDelivered, "latency run");
  } catch (err) {
    fail(`${err.message}: ${received} of ${subs * total} delivered`);
  }
  const elapsed = (performance.now() - start) / 1000;
  stopping = true;
  const sorted = samples.subarray(0, recorded).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  await handOver({
    phase: "done",
    samples: recorded,
    deliveries_per_second: subs * rate,
    delivered: received,
    seconds: elapsed,
    p50_ms: at(0.5),
    p99_ms: at(0.99),
    max_ms: sorted[sorted.length - 1],
  });
}

async function conns() {
  const { targets, warm = 100 } = spec;
  const clients = await connectMany(warm, () => {});
  await handOver({ phase: "at", n: clients.length });
  for (const target of targets) {
    const t0 = performance.now();
    await connectMany(target - clients.length, () => {}, clients);
    await handOver({ phase: "at", n: clients.length, seconds: (performance.now() - t0) / 1000 });
  }
  stopping = true;
  await handOver({ phase: "end" });
}

const scenarios = { fanout, latency, conns };
const run = scenarios[spec.scenario];
if (!run) fail(`unknown scenario ${spec.scenario}`);
run().then(
  () => process.exit(0),
  (err) => fail(String(err && err.stack ? err.stack : err)),
);
