// The official socket.io 4.8 server for roomcast's Python client tests.
// Usage: node server.cjs  -> prints "listening on PORT" (port 0: the OS picks one).
// Events: echo (ack with the same args), ask (the server asks the client "question" with an
// ack and acks the answer back), join (room), cut (closes the transport: the client comes
// back through connection state recovery; "missed" is emitted to the room while it is away).
"use strict";
const { createServer } = require("http");
const { Server } = require("socket.io");

const httpServer = createServer();
const io = new Server(httpServer, {
  pingInterval: 2000,
  pingTimeout: 1000,
  connectionStateRecovery: { maxDisconnectionDuration: 30000, skipMiddlewares: true },
});

io.on("connection", (socket) => {
  socket.emit("welcome", { recovered: socket.recovered, id: socket.id });
  socket.on("echo", (...args) => {
    const ack = args.pop();
    ack(...args);
  });
  socket.on("ask", (question, ack) => {
    socket.timeout(5000).emit("question", question, (err, answer) => ack(err ? "no answer" : answer));
  });
  socket.on("join", (room, ack) => {
    socket.join(room);
    ack(true);
  });
  socket.on("broadcast", (room, n, ack) => {
    io.to(room).emit("news", n);
    ack(true);
  });
  socket.on("cut", (room) => {
    socket.once("disconnect", () => {
      io.to(room).emit("missed", 1); // recorded for the session while it is away
      io.to(room).emit("missed", 2);
    });
    socket.conn.close(); // a transport close: the session is kept for recovery
  });
});

httpServer.listen(0, "127.0.0.1", () => {
  console.log(`listening on ${httpServer.address().port}`);
});
