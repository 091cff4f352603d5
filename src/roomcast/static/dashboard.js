/**
 * The roomcast dashboard (`/dashboard`, server/dashboard.py). An ES module on roomcast's own
 * browser module: it follows the server's stats room and the task list room over SSE, and
 * draws what arrives. No dependencies, no build step.
 *
 * Rules this file keeps, because the page shows what clients and workers wrote:
 * - text from the server (room names, task titles, errors, reasons) goes into the DOM with
 *   `textContent` or as an attribute value, never through `innerHTML`;
 * - no inline script or style: the page's Content-Security-Policy allows only 'self';
 * - no credential here: the session is an HttpOnly cookie the browser sends by itself.
 */
import {RoomcastClient} from "/roomcast.js";

const STATS_ROOM = "$roomcast:dashboard";
const TASKS_ROOM = "tasks";
const HISTORY = 60; // points per chart: a minute at one snapshot a second
const ENDED = new Set(["cancelled", "completed", "failed", "timed_out"]);

const $ = (id) => document.getElementById(id);

/** An element with text content and attributes: the one way this page builds DOM. */
function el(tag, {text, cls, attrs} = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

const number = new Intl.NumberFormat(undefined, {maximumFractionDigits: 1});
const clock = (ts) => new Date(ts * 1000).toLocaleTimeString();

/** A small line chart on a canvas, scaled to its highest point; drawn by hand, no library. */
class Sparkline {
  constructor(canvas, color) {
    Object.assign(this, {canvas, color, points: []});
  }
  push(value) {
    this.points.push(value);
    if (this.points.length > HISTORY) this.points.shift();
    this.draw();
  }
  draw() {
    const {canvas, points} = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width, height = canvas.clientHeight || canvas.height;
    if (canvas.width !== width * ratio) (canvas.width = width * ratio), (canvas.height = height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.strokeStyle = "#e3e6ec";
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    if (points.length < 2) return;
    const top = Math.max(1, ...points) * 1.15;
    const x = (i) => (i / (HISTORY - 1)) * width, y = (v) => height - 2 - (v / top) * (height - 4);
    const offset = HISTORY - points.length;
    ctx.beginPath();
    points.forEach((v, i) => (i ? ctx.lineTo(x(i + offset), y(v)) : ctx.moveTo(x(i + offset), y(v))));
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = this.color;
    ctx.stroke();
    ctx.lineTo(x(HISTORY - 1), height);
    ctx.lineTo(x(offset), height);
    ctx.closePath();
    ctx.globalAlpha = 0.12;
    ctx.fillStyle = this.color;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
}

const charts = {
  publications: new Sparkline($("publish-chart"), "#2f6fed"),
  deliveries: new Sparkline($("delivery-chart"), "#1f8a4c"),
};
const tasks = new Map(); // id -> the task's latest line (from a stats snapshot or the tasks room)
const stopping = new Set(); // ids whose Stop request is in flight

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderStats(stats) {
  $("node").textContent = `node ${stats.node}` + (stats.nodes > 1 ? ` · ${stats.nodes} workers` : "");
  const transports = Object.entries(stats.connections).sort(([a], [b]) => (a < b ? -1 : 1));
  $("connections-total").textContent = number.format(transports.reduce((sum, [, n]) => sum + n, 0));
  replaceRows(
    $("connections").tBodies[0],
    transports.map(([name, n]) => el("tr", {attrs: {"data-transport": name}}, [el("td", {text: name}), el("td", {text: number.format(n), cls: "num"})])),
  );
  $("publish-rate").textContent = number.format(stats.rates.publications);
  $("delivery-rate").textContent = number.format(stats.rates.deliveries);
  $("publications-total").textContent = number.format(stats.totals.publications);
  $("deliveries-total").textContent = number.format(stats.totals.deliveries);
  charts.publications.push(stats.rates.publications);
  charts.deliveries.push(stats.rates.deliveries);
  $("room-count").textContent = number.format(stats.room_count);
  replaceRows(
    $("rooms").tBodies[0],
    stats.rooms.map((r) =>
      el("tr", {}, [el("td", {text: r.room}), el("td", {text: r.connections, cls: "num"}), el("td", {text: r.users, cls: "num"})]),
    ),
  );
  tasks.clear();
  for (const task of stats.tasks) tasks.set(task.id, task);
  renderTasks();
  renderLog($("disconnects"), stats.disconnects, (d) => `${d.reason} (${d.code})` + (d.count > 1 ? ` × ${d.count}` : ""));
  renderLog($("errors"), stats.errors, (e) => `${e.kind}: ${e.message}`);
}

function renderLog(list, entries, describe) {
  list.replaceChildren(
    ...(entries.length ? entries.map((e) => el("li", {}, [el("time", {text: clock(e.ts)}), describe(e)])) : [el("li", {text: "none", cls: "muted"})]),
  );
}

let shownTasks = null; // what the table shows: left alone when nothing changed, so a click is never lost
function renderTasks() {
  const shown = JSON.stringify([[...tasks.values()], [...stopping]]);
  if (shown === shownTasks) return;
  shownTasks = shown;
  const rows = [...tasks.values()].map((task) => {
    const running = !ENDED.has(task.status);
    const stop = el("button", {text: stopping.has(task.id) ? "Stopping…" : "Stop", cls: "stop", attrs: {type: "button"}});
    stop.disabled = !running || task.status === "stopping" || stopping.has(task.id);
    stop.addEventListener("click", () => stopTask(task.id));
    const bar = el("progress", {attrs: {max: 100}});
    if (task.progress !== null && task.progress !== undefined) bar.value = task.progress;
    const detail = task.error ?? task.message ?? task.step ?? "";
    return el("tr", {attrs: {"data-task": task.id, "data-status": task.status}}, [
      el("td", {}, [el("div", {text: task.title || task.kind}), el("div", {text: `${task.kind} · ${task.id}`, cls: "muted small"})]),
      el("td", {text: task.status, cls: `status status-${task.status}`}),
      el("td", {}, [bar, el("div", {text: detail, cls: "muted small"})]),
      el("td", {}, running ? [stop] : []),
    ]);
  });
  replaceRows($("tasks").tBodies[0], rows.length ? rows : [el("tr", {}, [el("td", {text: "no tasks", cls: "muted", attrs: {colspan: 4}})])]);
}

async function stopTask(id) {
  stopping.add(id);
  renderTasks();
  try {
    const res = await fetch(`/dashboard/api/tasks/${encodeURIComponent(id)}/stop`, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: "{}",
      credentials: "same-origin",
    });
    const body = await res.json().catch(() => null);
    if (res.ok && body) tasks.set(id, {...tasks.get(id), ...body});
    else console.warn("dashboard: stop refused", res.status, body?.error?.message);
    if (res.status === 401) location.reload(); // the session ended: back to the login form
  } finally {
    stopping.delete(id);
    renderTasks();
  }
}

function taskChanged(summary) {
  if (!summary || typeof summary.id !== "string") return;
  tasks.set(summary.id, {...(tasks.get(summary.id) ?? {}), ...summary});
  renderTasks();
}

const client = new RoomcastClient(new URL("/dashboard", location.origin), {transport: "sse", backoffMax: 5000});
client.onState(({new: state, reason}) => {
  const badge = $("state");
  badge.textContent = state;
  badge.dataset.state = state;
  badge.title = reason ?? "";
  if (state === "disconnected" && /^refused/.test(reason ?? "")) location.reload(); // logged out or expired
});
client.on("stats", (stats) => renderStats(stats));
for (const event of ["task:created", "task:updated", "task:progress", "task:stopping", "task:cancelled", "task:completed", "task:failed", "task:timed_out"]) {
  client.on(event, (summary, meta) => meta.room === TASKS_ROOM && taskChanged(summary));
}
client.subscribe(STATS_ROOM).catch((err) => console.warn("dashboard: stats", err.message));
client.subscribe(TASKS_ROOM).catch((err) => console.warn("dashboard: tasks", err.message));
client.connect().catch((err) => console.warn("dashboard:", err.message));
renderTasks();
for (const chart of Object.values(charts)) chart.draw();
