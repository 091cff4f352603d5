// Drives the official socket.io-client (from tests/interop/node) through a load balancer with
// no sticky sessions, for test_no_sticky_sessions.py.
//
// Usage:  node nosticky_scenario.mjs SCENARIO '{"url": PROXY_URL, "apis": [NODE_A, NODE_B], ...}'
//
// Scenarios:
//   rooms  connect (no reconnection), subscribe with the built-in `subscribe`, receive five
//          publications in order: made through node A's and node B's HTTP API and one by this
//          client's own `publish` emit (with its ack); wait for the upgrade's outcome when
//          websocket is allowed; disconnect.
//   kill   connect with reconnection, subscribe, publish and receive one event, print `ready`
//          (the test then SIGKILLs the session's owner), then on the reconnection: subscribe
//          again, publish and receive through the new session, disconnect.
//
// Options: url, apis, room, transports (default ["polling"]), timeoutMs (default 15000), apiKey
// (sent as a Bearer token by the API publishes).
//
// Output: one JSON object per line: open {transport, sid}, connected {transport, sid, n},
// ack {event, reply}, received {data}, upgrade {outcome}, ready {sid}, disconnect {reason},
// final-transport {transport}, done {} (then the process ends by itself once its last
// requests, the close included, are answered), error {message} (exit 1; 2 on timeout).
// Nothing sleeps: every wait is on an event or a reply, under the one timeout.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'interop', 'node', 'package.json'));
const { io } = require('socket.io-client');

const [scenarioName, optionsJson = '{}'] = process.argv.slice(2);
const options = JSON.parse(optionsJson);
const transports = options.transports ?? ['polling'];
let waitingFor = 'start';

function report(type, fields = {}) {
  process.stdout.write(JSON.stringify({ type, ...fields }) + '\n');
}

function fail(code, message) {
  process.stdout.write(JSON.stringify({ type: 'error', message }) + '\n', () => process.exit(code));
}

// unref: the process ends by itself once nothing is pending; the timer only bounds a hang.
setTimeout(() => fail(2, `timeout waiting for ${waitingFor}`), options.timeoutMs ?? 15000).unref();

/** Publish through one node's HTTP API, as a backend would. */
async function publishVia(api, data) {
  waitingFor = `the API publish of ${data} on ${api}`;
  const response = await fetch(`${api}/api/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {}) },
    body: JSON.stringify({ room: options.room, event: 'n', data }),
  });
  if (response.status !== 200) throw new Error(`publish via ${api}: ${response.status} ${await response.text()}`);
}

function emitWithAck(socket, event, ...args) {
  waitingFor = `the ack of ${event}`;
  return new Promise((resolve) => {
    socket.emit(event, ...args, (reply) => {
      report('ack', { event, reply });
      resolve(reply);
    });
  });
}

/** The events `n` in arrival order; `until(k)` resolves once `k` of them arrived. */
function collect(socket) {
  const got = [];
  const waiters = [];
  socket.on('n', (data) => {
    got.push(data);
    report('received', { data });
    for (const w of waiters.filter((w) => got.length >= w.count)) w.resolve(got.slice());
  });
  return {
    until(count) {
      waitingFor = `${count} events n`;
      return got.length >= count ? Promise.resolve(got.slice()) : new Promise((resolve) => waiters.push({ count, resolve }));
    },
  };
}

function open(reconnection) {
  const socket = io(options.url, {
    transports,
    forceNew: true,
    reconnection,
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
  });
  socket.on('connect_error', (err) => {
    if (!reconnection) fail(1, `connect_error: ${err.message}`);
  });
  return socket;
}

/** Report how the upgrade ended: `upgrade` or `upgradeError` (the probe was refused). */
function upgradeOutcome(socket) {
  const engine = socket.io.engine;
  return new Promise((resolve) => {
    engine.once('upgrade', (transport) => resolve(`upgrade to ${transport.name}`));
    engine.once('upgradeError', (err) => resolve(`upgradeError: ${err.message}`));
  });
}

/** Disconnect and report it; the close packet goes out, and the process ends once it is answered. */
function disconnect(socket) {
  waitingFor = 'the disconnect';
  return new Promise((resolve) => {
    socket.once('disconnect', (reason) => {
      report('disconnect', { reason });
      resolve();
    });
    socket.disconnect();
  });
}

const scenarios = {
  async rooms() {
    const socket = open(false);
    const outcome = upgradeOutcome(socket);
    socket.on('disconnect', (reason) => {
      if (reason !== 'io client disconnect') fail(1, `disconnected: ${reason}`);
    });
    const events = collect(socket);
    waitingFor = 'connect';
    await new Promise((resolve) => socket.once('connect', resolve));
    report('connected', { transport: socket.io.engine.transport.name, sid: socket.io.engine.id, n: 1 });
    await emitWithAck(socket, 'subscribe', { room: options.room });
    const [a, b] = options.apis;
    await publishVia(a, 1);
    await publishVia(b, 2);
    await emitWithAck(socket, 'publish', { room: options.room, event: 'n', data: 3 });
    await publishVia(a, 4);
    await publishVia(b, 5);
    await events.until(5);
    if (transports.includes('websocket')) {
      waitingFor = 'the upgrade to end';
      report('upgrade', { outcome: await outcome });
    }
    report('final-transport', { transport: socket.io.engine.transport.name });
    await disconnect(socket);
  },

  async kill() {
    const socket = open(true);
    const events = collect(socket);
    let connects = 0;
    const subscribed = [];
    const next = [];
    socket.on('connect', async () => {
      connects += 1;
      const engine = socket.io.engine;
      report('connected', { transport: engine.transport.name, sid: engine.id, n: connects });
      await emitWithAck(socket, 'subscribe', { room: options.room });
      subscribed.push(engine.id);
      for (const w of next.splice(0)) w();
    });
    socket.on('disconnect', (reason) => report('disconnect', { reason }));
    const subscriptions = (count) => {
      waitingFor = `subscription number ${count}`;
      return subscribed.length >= count ? Promise.resolve() : new Promise((resolve) => next.push(resolve));
    };
    await subscriptions(1);
    await emitWithAck(socket, 'publish', { room: options.room, event: 'n', data: 'before' });
    await events.until(1);
    report('ready', { sid: subscribed[0] });
    await subscriptions(2); // after the owner's death, on a new session
    await emitWithAck(socket, 'publish', { room: options.room, event: 'n', data: 'after' });
    await events.until(2);
    report('final-transport', { transport: socket.io.engine.transport.name });
    await disconnect(socket);
  },
};

const scenario = scenarios[scenarioName];
if (!scenario || !options.url) {
  process.stderr.write(`usage: node nosticky_scenario.mjs {${Object.keys(scenarios).join('|')}} '{"url": ...}'\n`);
  process.exit(64);
}
scenario().then(
  () => report('done'),
  (err) => fail(1, String(err?.stack ?? err)),
);
