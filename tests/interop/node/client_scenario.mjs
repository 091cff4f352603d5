// Interop driver: runs one scenario with the official socket.io-client against a Socket.IO
// server and reports what it observed, so that pytest can assert on it.
//
// Usage:  node client_scenario.mjs SCENARIO '{"url": "http://127.0.0.1:PORT", ...}'
//
// Options (second argument, JSON):
//   url         server base URL (required)
//   transports  e.g. ["websocket"], ["polling"], ["polling", "websocket"] (default the latter)
//   upgrade     allow the polling -> websocket upgrade (default true)
//   auth        handshake auth object (default {})
//   data        scenario payload; binary values are written {"$binary": "<hex>"}
//   timeoutMs   hard limit for the whole run (default 10000)
//
// Output: one JSON object per line on stdout, each with a "type":
//   open {socket, transport}            the Engine.IO handshake completed on this transport
//   connected {socket, transport, id}   the Socket.IO connection is up (transport in use then)
//   upgrade {socket, transport}         the engine upgraded its transport
//   auth {socket, data}                 the server's `auth` event
//   received {socket, event, data}      an event the scenario listens to
//   ack {event, args}                   an acknowledgement with its arguments
//   final-transport {socket, transport} transport in use when the scenario finished
//   done {}                             success (exit 0)
//   error {message}                     failure (exit 1), or timeout (exit 2)
// Binary values in reported data are written {"$binary": "<hex>"} as well.
import { randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';

const [scenarioName, optionsJson = '{}'] = process.argv.slice(2);
const options = JSON.parse(optionsJson);
const sockets = [];
let waitingFor = 'start'; // the latest step awaited, named in the timeout message
const authReceived = new WeakMap(); // socket -> promise of the server's `auth` event payload

/** Print one observation as a JSON line. */
function report(type, fields = {}) {
  process.stdout.write(JSON.stringify({ type, ...fields }) + '\n');
}

/** Close every socket, print the last line and exit with `code` once stdout is flushed. */
let finished = false;
function finish(code, type, fields = {}) {
  if (finished) return; // the first outcome wins (e.g. an error before the timeout)
  finished = true;
  for (const socket of sockets) socket.close();
  process.stdout.write(JSON.stringify({ type, ...fields }) + '\n', () => process.exit(code));
}

/** Turn Buffers / ArrayBuffers / typed arrays into {"$binary": hex}, recursively. */
function toJson(value) {
  if (Buffer.isBuffer(value)) return { $binary: value.toString('hex') };
  if (value instanceof ArrayBuffer) return { $binary: Buffer.from(value).toString('hex') };
  if (ArrayBuffer.isView(value)) {
    return { $binary: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex') };
  }
  if (Array.isArray(value)) return value.map(toJson);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  }
  return value;
}

/** Inverse of toJson: {"$binary": hex} becomes a Buffer, recursively. */
function fromJson(value) {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === '$binary') return Buffer.from(value.$binary, 'hex');
    return Object.fromEntries(keys.map((k) => [k, fromJson(value[k])]));
  }
  return value;
}

/**
 * Open a socket named `label`, report its `auth` event and upgrades, and resolve once it is
 * connected. Connection errors and unexpected disconnects fail the run.
 */
function connect(label) {
  waitingFor = `${label} to connect`;
  const socket = io(options.url, {
    transports: options.transports ?? ['polling', 'websocket'],
    upgrade: options.upgrade ?? true,
    auth: options.auth ?? {},
    forceNew: true, // one Engine.IO connection per socket, even for the same URL
    reconnection: false,
  });
  sockets.push(socket);
  const engine = socket.io.engine; // created synchronously by io(); opens with transports[0]
  engine.once('open', () => report('open', { socket: label, transport: engine.transport.name }));
  engine.on('upgrade', (transport) => report('upgrade', { socket: label, transport: transport.name }));
  authReceived.set(socket, new Promise((resolve) => {
    socket.on('auth', (data) => {
      report('auth', { socket: label, data: toJson(data) });
      resolve(data);
    });
  }));
  socket.on('disconnect', (reason) => {
    if (reason === 'io client disconnect') return; // our own close() in finish()
    finish(1, 'error', { message: `${label} disconnected: ${reason}` });
  });
  return new Promise((resolve) => {
    socket.on('connect_error', (err) => {
      finish(1, 'error', { message: `${label} connect_error: ${err.message}` });
    });
    socket.on('connect', () => {
      report('connected', { socket: label, transport: engine.transport.name, id: socket.id });
      resolve(socket);
    });
  });
}

/** Resolve with the first `event` received on `socket` (reported as `received`). */
function nextEvent(socket, label, event) {
  waitingFor = `${label} to receive ${event}`;
  return new Promise((resolve) => {
    socket.once(event, (...args) => {
      report('received', { socket: label, event, data: toJson(args.length === 1 ? args[0] : args) });
      resolve(args);
    });
  });
}

/** Emit `event` with `args` and resolve with the acknowledgement's arguments (reported as `ack`). */
function emitWithAck(socket, event, ...args) {
  waitingFor = `the ack of ${event}`;
  return new Promise((resolve) => {
    socket.emit(event, ...args, (...ackArgs) => {
      report('ack', { event, args: toJson(ackArgs) });
      resolve(ackArgs);
    });
  });
}

/**
 * Report the transport `socket` ends on. When an upgrade to websocket is allowed and has not
 * happened yet, wait for it (the run's timeout bounds the wait).
 */
async function reportFinalTransport(socket, label) {
  const engine = socket.io.engine;
  const transports = options.transports ?? ['polling', 'websocket'];
  const upgradeExpected = (options.upgrade ?? true) && transports.includes('websocket');
  if (upgradeExpected && engine.transport.name !== 'websocket') {
    waitingFor = `${label} to upgrade to websocket`;
    await new Promise((resolve) => engine.once('upgrade', resolve));
  }
  report('final-transport', { socket: label, transport: engine.transport.name });
}

const scenarios = {
  /** Connect with `options.auth`; the server echoes it in an `auth` event. */
  async auth() {
    const socket = await connect('client');
    waitingFor = 'the auth event';
    await authReceived.get(socket);
    await reportFinalTransport(socket, 'client');
  },

  /**
   * Two sockets: `member` joins room A, `outsider` joins room B. `member` publishes to A,
   * then to B. The server handles one sender's packets in order, so if `outsider` were
   * (wrongly) sent the publish to A, it would arrive before the publish to B. The report
   * therefore lists the first `news` event `outsider` saw: it must be the one for room B.
   */
  async rooms() {
    const [member, outsider] = await Promise.all([connect('member'), connect('outsider')]);
    const roomA = `room-a-${randomUUID()}`;
    const roomB = `room-b-${randomUUID()}`;
    await Promise.all([
      emitWithAck(member, 'join', { room: roomA }),
      emitWithAck(outsider, 'join', { room: roomB }),
    ]);
    const memberGot = nextEvent(member, 'member', 'news');
    const outsiderGot = nextEvent(outsider, 'outsider', 'news');
    member.emit('publish', { room: roomA, event: 'news', data: { room: 'A', n: 1 } });
    member.emit('publish', { room: roomB, event: 'news', data: { room: 'B', n: 2 } });
    await Promise.all([memberGot, outsiderGot]);
    await Promise.all([reportFinalTransport(member, 'member'), reportFinalTransport(outsider, 'outsider')]);
  },

  /** Client -> server acks: `echo` (one value) and `message-with-ack` (several values). */
  async ack() {
    const socket = await connect('client');
    const data = fromJson(options.data ?? { hello: 'world' });
    await emitWithAck(socket, 'echo', data);
    await emitWithAck(socket, 'message-with-ack', 1, 'two', { three: [3] });
    await reportFinalTransport(socket, 'client');
  },

  /** Emit `message` with `options.data` (binary nested inside); receive `message-back`. */
  async binary() {
    const socket = await connect('client');
    const back = nextEvent(socket, 'client', 'message-back');
    socket.emit('message', fromJson(options.data));
    await back;
    await reportFinalTransport(socket, 'client');
  },
};

const scenario = scenarios[scenarioName];
if (!scenario || !options.url) {
  const names = Object.keys(scenarios).join('|');
  process.stderr.write(`usage: node client_scenario.mjs {${names}} '{"url": ...}'\n`);
  process.exit(64);
}
const timeoutMs = options.timeoutMs ?? 10000;
setTimeout(() => {
  finish(2, 'error', { message: `timeout after ${timeoutMs} ms waiting for ${waitingFor}` });
}, timeoutMs);
scenario().then(
  () => finish(0, 'done'),
  (err) => finish(1, 'error', { message: String(err?.stack ?? err) }),
);
