// The dashboard: polls /v2/dashboard every second and redraws the tables. Every text goes in
// through textContent (never innerHTML), so a model's name is shown, never run.
"use strict";

const FEED = "/v2/dashboard";
const PERIOD_MS = 1000;
const DASH = "–";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function num(value, digits) {
  if (value === null || value === undefined) return DASH;
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function pct(value) {
  return value === null || value === undefined ? DASH : num(value * 100, 1) + " %";
}

function bytes(value) {
  if (value === null || value === undefined) return DASH;
  return num(value / 2 ** 30, 1) + " GiB";
}

function bar(fraction, text) {
  const cell = el("td");
  if (fraction !== null && fraction !== undefined) {
    const outer = el("span", null, "bar");
    const inner = el("span");
    inner.style.width = Math.max(0, Math.min(1, fraction)) * 100 + "%";
    outer.appendChild(inner);
    cell.appendChild(outer);
  }
  cell.appendChild(document.createTextNode(text));
  return cell;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function devices(list) {
  if (!list || list.length === 0) return DASH;
  return list
    .map((d) => `${d.device}: ${d.batch_size_cap} · ${num(d.queue_depth, 2)} · ${num(d.mean_batch, 1)}`)
    .join("  ");
}

function driftCell(drift) {
  if (!drift) return el("td", "off", "quiet");
  if (!drift.alarm) return el("td", "ok");
  const cell = el("td");
  cell.appendChild(el("span", "ALARM", "alarm"));
  if (drift.on && drift.on.length) cell.appendChild(document.createTextNode(" " + drift.on.join(", ")));
  return cell;
}

function feedbackCell(feedback) {
  if (!feedback) return el("td", "off", "quiet");
  const cell = el("td");
  if (feedback.alarm) cell.appendChild(el("span", "CHANGE", "alarm"));
  // an error rate as a percentage; another metric (mean absolute error) as a number
  const show = feedback.metric === "error_rate" ? pct : (v) => num(v, 3);
  let text = " " + show(feedback.error);
  if (feedback.low !== null && feedback.high !== null) text += ` [${show(feedback.low)}, ${show(feedback.high)}]`;
  if (feedback.metric !== "error_rate") text += " MAE";
  cell.appendChild(document.createTextNode(text));
  return cell;
}

function modelRow(m) {
  const name = el("td", m.name, "name");
  name.title = m.name;
  const state = el("td", m.state, m.state);
  if (m.reason) state.title = m.reason;
  const tr = row([
    name, m.version || DASH, state, num(m.requests, 0), num(m.rate, 1), num(m.failure_rate, 1),
    num(m.p50_ms, 2), num(m.p99_ms, 2), num(m.queue, 0), num(m.inflight, 0), num(m.batch_size, 1),
    devices(m.devices), pct(m.cache_hit_ratio), driftCell(m.drift), feedbackCell(m.feedback),
  ]);
  tr.dataset.model = m.name;
  tr.dataset.version = m.version;
  return tr;
}

function appRow(a) {
  const tr = row([
    el("td", a.name, "name"), a.policy, a.models.join(", "), num(a.predictions, 0), num(a.rate, 1),
    num(a.p50_ms, 2), num(a.p99_ms, 2), pct(a.default_ratio),
  ]);
  tr.dataset.application = a.name;
  return tr;
}

function gpuRow(g) {
  const memory = g.memory_total_bytes ? g.memory_used_bytes / g.memory_total_bytes : null;
  const power = g.power_limit_w ? g.power_w / g.power_limit_w : null;
  return row([
    el("td", g.uuid, "name"),
    bar(g.utilization, pct(g.utilization)),
    bar(memory, `${bytes(g.memory_used_bytes)} / ${bytes(g.memory_total_bytes)}`),
    bar(power, `${num(g.power_w, 0)} / ${num(g.power_limit_w, 0)} W`),
  ]);
}

function fill(id, rows, empty) {
  const body = document.querySelector(`#${id} tbody`);
  const cols = document.querySelectorAll(`#${id} thead th`).length;
  if (rows.length === 0) {
    const cell = el("td", empty, "quiet");
    cell.colSpan = cols;
    rows = [row([cell])];
  }
  body.replaceChildren(...rows);
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function draw(feed) {
  const id = feed.server.name && feed.server.name !== "clipperd" ? ` · ${feed.server.name}` : "";
  text("server-name", `${feed.server.version || ""}${id}`);
  text("total-ready", `${feed.totals.ready} / ${feed.totals.models}`);
  text("total-requests", num(feed.totals.requests, 0));
  text("total-rate", num(feed.totals.rate, 1));
  text("total-alarms", num(feed.totals.alarms, 0));
  text("uptime", num(feed.server.uptime_s, 0) + " s");
  text("window", num(feed.window_s, 1));
  fill("models", feed.models.map(modelRow), "no models in the repository");
  fill("applications", feed.applications.map(appRow), "no applications");
  fill("gpus", feed.gpus.map(gpuRow), "no GPU (or NVML unavailable)");
  const omitted = document.getElementById("models-omitted");
  omitted.hidden = !feed.omitted.models;
  omitted.textContent = `${feed.omitted.models} more model versions not shown`;
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch(FEED, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
    status.textContent = "live · " + new Date().toLocaleTimeString();
    status.className = "status";
  } catch (error) {
    status.textContent = "no answer from the server (" + error.message + ")";
    status.className = "status stale";
  } finally {
    setTimeout(poll, PERIOD_MS);
  }
}

poll();
