// Drives the example python-socketio board (examples/socketio_board/board.py) with the official
// socket.io-client and prints, as one JSON line, what each client received, in order: the
// transcript pytest compares between the board on python-socketio and on roomcast.
//
// Usage:  node sio_board_scenario.mjs http://127.0.0.1:PORT
import { io } from 'socket.io-client';

const url = process.argv[2];
const WAIT_MS = 15000;
const logs = {};
const sockets = [];

function client(name, path, options) {
  const log = (logs[name] = []);
  const socket = io(url + path, { transports: ['websocket'], reconnection: false, forceNew: true, ...options });
  socket.onAny((event, ...args) => log.push([event, ...args]));
  socket.on('connect_error', (err) => log.push(['connect_error', { message: err.message, data: err.data ?? null }]));
  socket.on('confirm', (question, answer) => { log.push(['confirm', question]); answer('yes: ' + question); });
  socket.on('rate', (question, answer) => { log.push(['rate', question]); answer(5, 'stars'); });
  sockets.push(socket);
  return { socket, log };
}

function until(peer, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} for ${JSON.stringify(peer.log)}`)), WAIT_MS);
    const check = () => {
      if (peer.log.some((entry) => entry[0] === event)) { clearTimeout(timer); resolve(); } else setTimeout(check, 5);
    };
    check();
  });
}

async function ask(peer, event, ...args) {
  const answer = await peer.socket.timeout(WAIT_MS).emitWithAck(event, ...args);
  peer.log.push(['ack:' + event, answer]);
}

async function main() {
  const nobody = client('nobody', '/', {});
  await until(nobody, 'connect_error');

  const alice = client('alice', '/?board=b2', { auth: { user: 'alice' }, extraHeaders: { 'X-Board-Client': 'js' } });
  const bob = client('bob', '/', { auth: { user: 'bob' } });
  await until(alice, 'welcome');
  await until(bob, 'welcome');

  await ask(alice, 'join', 'alpha');
  await ask(bob, 'join', 'alpha');
  await until(alice, 'joined');
  await ask(alice, 'add_card', { project: 'alpha', title: 'from js' });
  await until(bob, 'card_added');
  await ask(alice, 'attach', 'alpha', Buffer.from([0, 1, 2, 3]));
  await until(bob, 'attached');
  await ask(bob, 'whoami');
  await ask(bob, 'wave', 1, 'two');

  alice.socket.emit('confirm_me', 'ship it?');
  await until(alice, 'confirmed');
  alice.socket.emit('rate_me');
  await until(alice, 'rated');

  const admin = client('admin', '/admin', { auth: { user: 'root', role: 'admin' } });
  await ask(admin, 'watch', 'alpha');
  const eve = client('eve', '/admin', { auth: { user: 'eve' } });
  await until(eve, 'connect_error');

  bob.socket.emit('shout', 'hello all');
  await until(alice, 'shouted');
  await until(bob, 'shouted');
  admin.socket.emit('announce', 'maintenance');
  await until(admin, 'announcement');

  for (const peer of [alice, bob, admin]) await ask(peer, 'sync');
  process.stdout.write(JSON.stringify(logs) + '\n', () => {
    for (const socket of sockets) socket.close();
    process.exit(0);
  });
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }) + '\n', () => process.exit(1));
});
