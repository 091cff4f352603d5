// Interop driver steered line by line: one official socket.io-client whose every step the
// test decides, for scenarios where things happen around the client (servers killed, a proxy
// switched) that the client alone cannot order.
//
// Usage:  node steered_client.mjs '{"url": "http://127.0.0.1:PORT", "room": "r", ...}'
//
// Options (JSON):
//   url         server base URL (required)
//   room        the room `subscribe` and `resubscribe` ask for (required)
//   transports  default ["websocket"]
//   timeoutMs   hard limit for the whole run (default 20000)
//
// The client reconnects by itself (20 ms delay) and asks for room meta (`?roomcast=1`), so
// each publication tells it its room's epoch and offset. Every CONNECT after the first is
// held in the `auth` callback until the test says `reconnect`: whatever the test does
// meanwhile (publish, wait for a server to save the session) happens before the comeback.
//
// Commands, one JSON object per line on stdin:
//   {"do": "subscribe"}    the built-in `subscribe {room}`; its ack is reported
//   {"do": "resubscribe"}  `subscribe {room, epoch, offset}` from the last publication received
//   {"do": "reconnect"}    let the held CONNECT go (or the next one, if none is held yet)
//   {"do": "end"}          close and exit 0
//
// Output: one JSON object per line on stdout, each with a "type":
//   connected {id, recovered}        each `connect`
//   disconnected {reason}            each `disconnect` but the last
//   subscribed {reply}               the ack of `subscribe` / `resubscribe`
//   received {data, extra}           each `news` event: its first argument and the rest
//                                    (room meta, then the recovery offset)
//   done {}                          success (exit 0)
//   error {message}                  failure (exit 1), or timeout (exit 2)
import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const options = JSON.parse(process.argv[2] ?? '{}');
let finished = false;
let socket = null;

function report(type, fields = {}) {
  process.stdout.write(JSON.stringify({ type, ...fields }) + '\n');
}

function finish(code, type, fields = {}) {
  if (finished) return;
  finished = true;
  socket?.close();
  process.stdout.write(JSON.stringify({ type, ...fields }) + '\n', () => process.exit(code));
}

if (!options.url || !options.room) {
  process.stderr.write('usage: node steered_client.mjs \'{"url": ..., "room": ...}\'\n');
  process.exit(64);
}

let connects = 0;
const held = []; // `send` callbacks of CONNECTs waiting for `reconnect`
let allowed = 0; // `reconnect`s given before the CONNECT they let go was ready
let last = null; // the room meta of the last publication received

socket = io(options.url, {
  transports: options.transports ?? ['websocket'],
  forceNew: true,
  reconnectionDelay: 20,
  reconnectionDelayMax: 20,
  randomizationFactor: 0,
  query: { roomcast: '1' },
  // Called for every CONNECT packet; the client adds {pid, offset} to what it is given.
  auth: (send) => {
    connects += 1;
    if (connects === 1) send({});
    else if (allowed > 0) {
      allowed -= 1;
      send({});
    } else held.push(send);
  },
});
socket.on('connect', () => report('connected', { id: socket.id, recovered: socket.recovered }));
socket.on('disconnect', (reason) => {
  if (reason !== 'io client disconnect') report('disconnected', { reason });
});
socket.on('connect_error', (err) => finish(1, 'error', { message: `connect_error: ${err.message}` }));
socket.on('news', (data, ...extra) => {
  const meta = extra.find((arg) => arg !== null && typeof arg === 'object' && '$room' in arg);
  if (meta) last = meta;
  report('received', { data, extra });
});

function subscribe(request) {
  socket.emit('subscribe', request, (reply) => report('subscribed', { reply }));
}

const commands = {
  subscribe: () => subscribe({ room: options.room }),
  resubscribe: () => {
    if (last === null) throw new Error('resubscribe before any publication');
    subscribe({ room: options.room, epoch: last.$epoch, offset: last.$offset });
  },
  reconnect: () => {
    if (held.length > 0) held.shift()({});
    else allowed += 1;
  },
  end: () => finish(0, 'done'),
};

createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  try {
    const command = JSON.parse(line).do;
    if (!(command in commands)) throw new Error(`unknown command ${command}`);
    commands[command]();
  } catch (err) {
    finish(1, 'error', { message: String(err?.stack ?? err) });
  }
});
process.stdin.on('end', () => finish(1, 'error', { message: 'stdin closed before "end"' }));

const timeoutMs = options.timeoutMs ?? 20000;
setTimeout(() => finish(2, 'error', { message: `timeout after ${timeoutMs} ms` }), timeoutMs);
