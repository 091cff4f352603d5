// The ceiling: a raw pub/sub fan-out server on uWebSockets (C++), with the benchmark application.
//
//   node bench/uws/server.mjs --port N
//
// It speaks no Engine.IO: a client upgrades any path to a WebSocket and is connected (no open
// packet, no pings). On that socket it reads and writes the very text frames a Socket.IO v5
// client exchanges, so the load generator's `raw` mode counts the same bytes it counts from
// the Socket.IO servers: `42<id>["join",{room}]` subscribes the socket to the room's topic and
// acks `43<id>[true]`; `42<id>["publish",{room,event,data}]` publishes `42[event,data]` to the
// topic with uWS's native pub/sub (one frame made per publication, written to every
// subscriber in C++) and acks; `echo` acks with its data. Compression off, as the other peers.
import uWS from "uwebsockets";

const args = process.argv.slice(2);
const portIndex = args.indexOf("--port");
const port = portIndex >= 0 ? Number(args[portIndex + 1]) : 3000;
const decoder = new TextDecoder();

/** `42<id>[name, arg]` -> [id, name, arg]; null for anything else (ignored, as a peer would). */
function parseEvent(text) {
  if (!text.startsWith("42")) return null;
  let end = 2;
  while (end < text.length && text.charCodeAt(end) >= 0x30 && text.charCodeAt(end) <= 0x39) end++;
  let packet;
  try {
    packet = JSON.parse(text.slice(end));
  } catch {
    return null;
  }
  if (!Array.isArray(packet) || typeof packet[0] !== "string") return null;
  return [end > 2 ? text.slice(2, end) : null, packet[0], packet[1]];
}

const isRequest = (r) => r !== null && typeof r === "object" && typeof r.room === "string";

const app = uWS.App();
app.ws("/*", {
  compression: uWS.DISABLED,
  maxPayloadLength: 1 << 20,
  maxBackpressure: 16 << 20,
  idleTimeout: 0, // no keep-alive pings: the raw mode has no Engine.IO heartbeat either
  message: (ws, message, isBinary) => {
    if (isBinary) return;
    const event = parseEvent(decoder.decode(message));
    if (event === null) return;
    const [id, name, request] = event;
    let answer;
    if (name === "join") {
      answer = isRequest(request);
      if (answer) ws.subscribe(request.room);
    } else if (name === "publish") {
      answer = isRequest(request) && typeof request.event === "string";
      if (answer) app.publish(request.room, `42${JSON.stringify([request.event, request.data])}`, false);
    } else if (name === "echo") {
      answer = request;
    } else {
      return;
    }
    if (id !== null) ws.send(`43${id}${JSON.stringify([answer])}`, false);
  },
});
app.listen("127.0.0.1", port, (token) => {
  if (!token) {
    console.error(`uWebSockets could not listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`uWebSockets listening on ws://127.0.0.1:${port}`);
});
process.on("SIGTERM", () => process.exit(0));
