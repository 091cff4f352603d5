// The reference peer: the official Node socket.io server with the benchmark application.
//
//   node bench/node/server.mjs --port N
//
// Same events as bench/server.py: `join {room}` (ack true), `publish {room, event, data}`
// (emit to the room, sender included; ack true) and `echo` (ack with the data). Defaults are
// the library's own (websocket + polling, no compression): what a user gets out of the box.
import { createServer } from "node:http";
import { Server } from "socket.io";

const args = process.argv.slice(2);
const portIndex = args.indexOf("--port");
const port = portIndex >= 0 ? Number(args[portIndex + 1]) : 3000;

const httpServer = createServer();
const io = new Server(httpServer, { cors: { origin: "*" } });

io.on("connection", (socket) => {
  socket.on("join", (request, ack) => {
    const ok = request !== null && typeof request === "object" && typeof request.room === "string";
    if (ok) socket.join(request.room);
    if (typeof ack === "function") ack(ok);
  });
  socket.on("publish", (request, ack) => {
    const ok = request !== null && typeof request === "object"
      && typeof request.room === "string" && typeof request.event === "string";
    if (ok) io.to(request.room).emit(request.event, request.data);
    if (typeof ack === "function") ack(ok);
  });
  socket.on("echo", (data, ack) => {
    if (typeof ack === "function") ack(data);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`node socket.io listening on http://127.0.0.1:${port}`);
});
process.on("SIGTERM", () => process.exit(0));
