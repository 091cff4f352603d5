// Interop driver for connection state recovery: the official socket.io-client loses its
// transport, misses publications, reconnects by itself and reports what it observed.
//
// Usage:  node recovery_scenario.mjs '{"url": "http://127.0.0.1:PORT", ...}'
//
// Options (JSON):
//   url         server base URL (required); it serves the demo events join, publish, drop
//   transports  e.g. ["websocket"], ["polling"], ["polling", "websocket"] (default the latter)
//   timeoutMs   hard limit for the whole run (default 10000)
//
// The run: `subscriber` connects (auto-reconnection on, 20 ms delay) and joins a fresh room;
// `publisher` publishes n=1, 2 to it. `subscriber` emits `drop`, so the server closes its
// transport (a recoverable "transport close" for the client). While it is away `publisher`
// publishes n=3, 4, 5: the client's reconnection is held in its `auth` callback, which is
// called for every CONNECT packet, until those are acknowledged. Then, as an application
// would, it rejoins the room only if `socket.recovered` is false, and waits for n=5 if it
// is true; finally `publisher` publishes n=6 live.
//
// Output: one JSON object per line on stdout, each with a "type":
//   connected {id, recovered, transport}  each `connect` of `subscriber`
//   disconnected {reason}                 each `disconnect` of `subscriber` but the last
//   received {data, extra}                each `news` event: its first argument, and the rest
//                                         (the offset the server appends, if any)
//   done {}                               success (exit 0)
//   error {message}                       failure (exit 1), or timeout (exit 2)
import { randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';

const options = JSON.parse(process.argv[2] ?? '{}');
const transports = options.transports ?? ['polling', 'websocket'];
const sockets = [];
let waitingFor = 'start';
let finished = false;

function report(type, fields = {}) {
  process.stdout.write(JSON.stringify({ type, ...fields }) + '\n');
}

function finish(code, type, fields = {}) {
  if (finished) return;
  finished = true;
  for (const socket of sockets) socket.close();
  process.stdout.write(JSON.stringify({ type, ...fields }) + '\n', () => process.exit(code));
}

/** Resolve once `predicate()` holds, re-checking after each `event` on `socket`. */
function until(socket, event, what, predicate) {
  waitingFor = what;
  return new Promise((resolve) => {
    if (predicate()) return resolve();
    const check = () => {
      if (predicate()) {
        socket.off(event, check);
        resolve();
      }
    };
    socket.on(event, check);
  });
}

function ack(socket, event, ...args) {
  waitingFor = `the ack of ${event}`;
  return new Promise((resolve) => socket.emit(event, ...args, (...reply) => resolve(reply)));
}

async function run() {
  const room = `recovery-${randomUUID()}`;
  let connects = 0;
  let release;
  const away = new Promise((resolve) => { release = resolve; });

  const subscriber = io(options.url, {
    transports,
    forceNew: true,
    reconnectionDelay: 20,
    reconnectionDelayMax: 20,
    randomizationFactor: 0,
    // Called for every CONNECT packet; the client adds {pid, offset} to what it is given.
    auth: (send) => {
      connects += 1;
      if (connects === 1) send({ token: 'ann' });
      else away.then(() => send({ token: 'ann' }));
    },
  });
  sockets.push(subscriber);
  const received = [];
  const connected = [];
  subscriber.on('connect', () => {
    const entry = {
      id: subscriber.id,
      recovered: subscriber.recovered,
      transport: subscriber.io.engine.transport.name,
    };
    connected.push(entry);
    report('connected', entry);
  });
  subscriber.on('disconnect', (reason) => {
    if (reason !== 'io client disconnect') report('disconnected', { reason });
  });
  subscriber.on('connect_error', (err) => finish(1, 'error', { message: `connect_error: ${err.message}` }));
  subscriber.on('news', (data, ...extra) => {
    received.push(data.n);
    report('received', { data, extra });
  });

  const publisher = io(options.url, { transports, forceNew: true, reconnection: false });
  sockets.push(publisher);
  const publish = (n) => ack(publisher, 'publish', { room, event: 'news', data: { n } });
  const has = (n) => () => received.includes(n);

  await until(subscriber, 'connect', 'subscriber to connect', () => connected.length === 1);
  await until(publisher, 'connect', 'publisher to connect', () => publisher.connected);
  if ((await ack(subscriber, 'join', { room }))[0] !== true) throw new Error('join refused');
  await publish(1);
  await publish(2);
  await until(subscriber, 'news', 'n=2', has(2));

  subscriber.emit('drop');
  await until(subscriber, 'disconnect', 'subscriber to lose its transport', () => !subscriber.connected);
  for (const n of [3, 4, 5]) await publish(n);
  release();
  await until(subscriber, 'connect', 'subscriber to reconnect', () => connected.length === 2);

  if (subscriber.recovered) {
    await until(subscriber, 'news', 'the missed n=5', has(5));
  } else if ((await ack(subscriber, 'join', { room }))[0] !== true) {
    throw new Error('rejoin refused');
  }
  await publish(6);
  await until(subscriber, 'news', 'n=6', has(6));
}

const timeoutMs = options.timeoutMs ?? 10000;
if (!options.url) {
  process.stderr.write('usage: node recovery_scenario.mjs \'{"url": ...}\'\n');
  process.exit(64);
}
setTimeout(() => finish(2, 'error', { message: `timeout after ${timeoutMs} ms waiting for ${waitingFor}` }), timeoutMs);
run().then(
  () => finish(0, 'done'),
  (err) => finish(1, 'error', { message: String(err?.stack ?? err) }),
);
