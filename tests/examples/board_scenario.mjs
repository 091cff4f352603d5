// Drives examples/project_board with the official socket.io-client (from tests/interop/node)
// and Node's fetch, as a browser page and a user clicking would.
//
// Usage:  node board_scenario.mjs '{"url": "http://127.0.0.1:PORT", "timeoutMs": 15000}'
//
// Every wait is a promise on an event or a reply, raced against a timer that fails the run:
// nothing sleeps. Each listener is set up before the HTTP call that causes its event.
//
// Output: one JSON object per line on stdout, each with a "type":
//   http {method, path, status, body}     each HTTP call
//   ack {socket, event, reply}            each acknowledged emit (subscribe, task:stop)
//   event {socket, event, data}           each event a socket received, in arrival order
//   mark {name, ...}                      a point of the script, for the test to slice on
//   done {}                               success (exit 0)
//   error {message}                       failure (exit 1), or timeout (exit 2)
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'interop', 'node', 'package.json'));
const { io } = require('socket.io-client');

const options = JSON.parse(process.argv[2] ?? '{}');
const timeoutMs = options.timeoutMs ?? 15000;
const waitMs = options.waitMs ?? 5000;
const sockets = [];
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

/** `promise`, or a failure of the whole run if it does not settle within `waitMs`. */
function within(promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${waitMs} ms`)), waitMs);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function http(method, route, body) {
  const init = { method, headers: { 'content-type': 'application/json' } };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await within(fetch(options.url + route, init), `answer to ${method} ${route}`);
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  report('http', { method, path: route, status: response.status, body: parsed });
  return parsed;
}

function connect(label) {
  const socket = io(options.url, { forceNew: true, reconnection: false });
  sockets.push(socket);
  socket.onAny((event, data) => report('event', { socket: label, event, data }));
  socket.on('disconnect', (reason) => {
    if (reason !== 'io client disconnect') finish(1, 'error', { message: `${label} disconnected: ${reason}` });
  });
  return within(new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  }), `connection of ${label}`);
}

function emit(socket, label, event, data) {
  return within(new Promise((resolve) => socket.emit(event, data, (reply) => {
    report('ack', { socket: label, event, reply });
    resolve(reply);
  })), `ack of ${event}`);
}

/** The first `event` on `socket` whose data satisfies `match`. */
function next(socket, event, match = () => true) {
  return within(new Promise((resolve) => {
    const check = (data) => {
      if (!match(data)) return;
      socket.off(event, check);
      resolve(data);
    };
    socket.on(event, check);
  }), `${event} event`);
}

async function run() {
  // State that exists before anyone subscribes.
  const project = await http('POST', '/projects', { name: 'Website' });
  const room = `project:${project.id}`;
  const first = await http('POST', `/projects/${project.id}/cards`, { title: 'Write sitemap' });

  // A page joins the list and the project: the current state comes first, in the acks.
  const board = await connect('board');
  await emit(board, 'board', 'subscribe', { room: 'projects' });
  await emit(board, 'board', 'subscribe', { room });

  report('mark', { name: 'projects' });
  let got = next(board, 'project:created');
  await http('POST', '/projects', { name: 'Blog' });
  await got;
  got = next(board, 'project:renamed');
  await http('PATCH', `/projects/${project.id}`, { name: 'Website 2' });
  await got;

  report('mark', { name: 'cards' });
  got = next(board, 'card:created');
  const card = await http('POST', `/projects/${project.id}/cards`, { title: 'Fix links' });
  await got;
  got = next(board, 'card:updated');
  await http('PATCH', `/projects/${project.id}/cards/${card.id}`, { done: true });
  await got;
  got = next(board, 'card:deleted');
  await http('DELETE', `/projects/${project.id}/cards/${first.id}`);
  await got;

  // A crawl runs to the end; its events reach the project room.
  report('mark', { name: 'crawl' });
  const completed = next(board, 'crawl:completed');
  const crawl = await http('POST', `/projects/${project.id}/crawl?pages=5&delay=0.05`);
  await completed;

  // A second, long crawl is stopped from the page mid-way (the stop button).
  report('mark', { name: 'stop', crawl: crawl.id });
  const moving = next(board, 'crawl_progress');
  const stopped = next(board, 'crawl:stopped');
  const long = await http('POST', `/projects/${project.id}/crawl?pages=100000&delay=0.01`);
  await moving;
  await emit(board, 'board', 'task:stop', { id: long.id });
  await stopped;

  // A page opened after both crawls ended gets each one's final state on joining its room.
  report('mark', { name: 'late', stopped: long.id });
  const late = await connect('late');
  await emit(late, 'late', 'subscribe', { room: crawl.room });
  await emit(late, 'late', 'subscribe', { room: long.room });
  await emit(late, 'late', 'subscribe', { room });

  // Bad input.
  report('mark', { name: 'bad' });
  await emit(board, 'board', 'task:stop', { id: 'no-such-task' });
  await http('POST', '/projects/nope/cards', { title: 'x' });
  await http('POST', '/projects/nope/crawl');
  await http('POST', `/projects/${project.id}/crawl/no-such-task/stop`);
  await http('POST', `/projects/${project.id}/crawl/${crawl.id}/stop`);
}

if (!options.url) {
  finish(1, 'error', { message: 'usage: node board_scenario.mjs \'{"url": "http://127.0.0.1:PORT"}\'' });
} else {
  setTimeout(() => finish(2, 'error', { message: `scenario exceeded ${timeoutMs} ms` }), timeoutMs).unref();
  run().then(
    () => finish(0, 'done'),
    (err) => finish(1, 'error', { message: String(err?.stack ?? err) }),
  );
}
