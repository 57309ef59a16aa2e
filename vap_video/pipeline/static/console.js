// vap console: plain JavaScript, no build step. Talks only to the vap that served it.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { location.reload(); throw new Error("not logged in"); }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// ---------------------------------------------------------------- login page
function loginPage() {
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await fetch("/login", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: $("token").value }), credentials: "same-origin" });
      if (r.ok) { location.reload(); return; }
      $("login-error").textContent = (await r.json()).error;
    } catch (e) { $("login-error").textContent = String(e); }
  });
}

// ---------------------------------------------------------------- console
const state = {
  streams: [], selected: null, analytics: null, frameSize: null,
  shapes: { zones: [], lines: [] },    // what the editor shows (relative coordinates for drawn ones)
  drawing: null,                       // {kind: "zone"|"line", points: [[x, y], ...]} in [0, 1]
  events: [], types: new Set(), knownStreams: new Set(),
};

function dropsText(drops) {
  const parts = Object.entries(drops || {}).filter(([, n]) => n).map(([r, n]) => `${r} ${n}`);
  return parts.length ? parts.join(", ") : "0";
}

async function refreshStreams() {
  try {
    state.streams = await api("GET", "/streams");
  } catch (e) { return; }
  const body = $("streams").querySelector("tbody");
  body.replaceChildren(...state.streams.map((s) => {
    const row = el("tr", { "data-name": s.name },
      el("td", { text: s.name }), el("td", { class: `state-${s.state}`, text: s.state }),
      el("td", { text: String(s.fps) }), el("td", { text: dropsText(s.drops) }),
      el("td", { text: String(s.reconnects) }), el("td", { class: "error", text: s.last_error || "" }));
    if (s.name === state.selected) row.classList.add("selected");
    row.addEventListener("click", () => select(s.name));
    return row;
  }));
  for (const s of state.streams) addOption($("filter-stream"), s.name, state.knownStreams);
  if (!state.selected && state.streams.length) select(state.streams[0].name);
}

function addOption(select, value, seen) {
  if (seen.has(value)) return;
  seen.add(value);
  select.append(el("option", { value, text: value }));
}

// ---- the picture: frame.jpg refreshed, or the MJPEG live view
let frameTimer = null;
function showFrame() {
  const img = $("frame");
  clearTimeout(frameTimer);
  if (!state.selected) return;
  const name = encodeURIComponent(state.selected);
  if ($("live").checked) {
    img.src = `/streams/${name}/live.mjpg?w=960`;
    return;
  }
  const wanted = state.selected;
  fetch(`/streams/${name}/frame.jpg?w=960`, { credentials: "same-origin" }).then(async (r) => {
    if (wanted !== state.selected || $("live").checked) return;
    if (!r.ok) { $("view-status").textContent = "no frame yet"; return; }
    const url = URL.createObjectURL(await r.blob());
    const old = img.src;
    img.src = url;
    img.dataset.seq = r.headers.get("X-Frame-Seq") || "";
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    if ($("view-status").textContent === "no frame yet") $("view-status").textContent = "";
  }).catch(() => { $("view-status").textContent = "vap is not answering"; })
    .finally(() => { if (wanted === state.selected) frameTimer = setTimeout(showFrame, 1000); });
}

async function select(name) {
  state.selected = name;
  $("view-name").textContent = name;
  for (const row of $("streams").querySelectorAll("tbody tr")) row.classList.toggle("selected", row.dataset.name === name);
  cancelDrawing();
  showFrame();
  await loadAnalytics();
}

// ---- the editor
function toRelative(points, relative) {
  if (relative || !state.frameSize) return points.map((p) => [p[0], p[1]]);
  const [w, h] = state.frameSize;
  return points.map((p) => [p[0] / w, p[1] / h]);
}

async function loadAnalytics() {
  if (!state.selected) return;
  let view;
  try { view = await api("GET", `/streams/${encodeURIComponent(state.selected)}/analytics`); } catch (e) { return; }
  state.analytics = view.analytics;
  state.frameSize = view.frame_size;
  state.shapes = {
    zones: view.analytics.zones.map((z) => ({ ...z })),
    lines: view.analytics.lines.map((l) => ({ ...l })),
  };
  $("yaml").value = view.yaml;
  renderShapes();
}

function renderShapes() {
  const list = $("shapes");
  const items = [];
  for (const kind of ["zones", "lines"]) {
    state.shapes[kind].forEach((s, i) => {
      const del = el("button", { type: "button", text: "remove", "data-kind": kind, "data-index": String(i) });
      del.addEventListener("click", () => { state.shapes[kind].splice(i, 1); renderShapes(); previewYaml(); });
      items.push(el("li", {}, `${kind === "zones" ? "zone" : "line"} ${s.name}`, del));
    });
  }
  list.replaceChildren(...items);
  drawOverlay();
}

function num(v) { return Math.round(v * 10000) / 10000; }

function yamlShape(s, kind) {
  const pts = kind === "zones" ? s.polygon : s.points;
  const coords = "[" + pts.map((p) => `[${num(p[0])}, ${num(p[1])}]`).join(", ") + "]";
  let out = `  - name: ${JSON.stringify(s.name)}\n    relative: ${s.relative ? "true" : "false"}\n`;
  out += `    ${kind === "zones" ? "polygon" : "points"}: ${coords}\n`;
  if (s.classes) out += `    classes: ${JSON.stringify(s.classes)}\n`;
  return out;
}

function previewYaml() {
  let out = "analytics:\n  zones:" + (state.shapes.zones.length ? "\n" : " []\n");
  out += state.shapes.zones.map((z) => yamlShape(z, "zones").replace(/^/gm, "  ")).join("");
  out += "  lines:" + (state.shapes.lines.length ? "\n" : " []\n");
  out += state.shapes.lines.map((l) => yamlShape(l, "lines").replace(/^/gm, "  ")).join("");
  $("yaml").value = out + "# not applied yet: press 'apply' to use it now\n";
}

function setMode(kind) {
  state.drawing = { kind, points: [] };
  $("mode-zone").classList.toggle("active", kind === "zone");
  $("mode-line").classList.toggle("active", kind === "line");
  $("cancel").disabled = false;
  $("finish").disabled = true;
  $("view-status").textContent = kind === "zone" ? "tap the corners of the zone, then 'finish'" :
    "tap the two ends of the line (A then B; 'in' is left to right of A->B)";
  drawOverlay();
}

function cancelDrawing() {
  state.drawing = null;
  $("mode-zone").classList.remove("active");
  $("mode-line").classList.remove("active");
  $("cancel").disabled = true;
  $("finish").disabled = true;
  $("view-status").textContent = "";
  drawOverlay();
}

function uniqueName(base, kind) {
  const taken = new Set(state.shapes[kind].map((s) => s.name));
  let n = 1;
  while (taken.has(`${base}${n}`)) n += 1;
  return `${base}${n}`;
}

function finishDrawing() {
  const d = state.drawing;
  if (!d) return;
  const kind = d.kind === "zone" ? "zones" : "lines";
  const wanted = $("shape-name").value.trim();
  const name = wanted && !state.shapes[kind].some((s) => s.name === wanted) ? wanted : uniqueName(d.kind, kind);
  if (d.kind === "zone" && d.points.length >= 3) state.shapes.zones.push({ name, relative: true, polygon: d.points });
  if (d.kind === "line" && d.points.length === 2) state.shapes.lines.push({ name, relative: true, points: d.points });
  $("shape-name").value = "";
  cancelDrawing();
  renderShapes();
  previewYaml();
}

function onStageClick(ev) {
  const d = state.drawing;
  if (!d) return;
  const rect = $("overlay").getBoundingClientRect();
  const x = Math.min(1, Math.max(0, (ev.clientX - rect.left) / rect.width));
  const y = Math.min(1, Math.max(0, (ev.clientY - rect.top) / rect.height));
  d.points.push([num(x), num(y)]);
  if (d.kind === "line" && d.points.length === 2) { finishDrawing(); return; }
  $("finish").disabled = !(d.kind === "zone" && d.points.length >= 3);
  drawOverlay();
}

function drawOverlay() {
  const canvas = $("overlay");
  const rect = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(rect.width));
  canvas.height = Math.max(1, Math.round(rect.height));
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const px = (p) => [p[0] * canvas.width, p[1] * canvas.height];
  const path = (pts, close) => {
    g.beginPath();
    pts.map(px).forEach(([x, y], i) => (i ? g.lineTo(x, y) : g.moveTo(x, y)));
    if (close) g.closePath();
  };
  g.lineWidth = 2;
  for (const z of state.shapes.zones) {
    path(toRelative(z.polygon, z.relative), true);
    g.strokeStyle = "rgba(255, 0, 255, 0.9)"; g.fillStyle = "rgba(255, 0, 255, 0.12)"; g.fill(); g.stroke();
  }
  for (const l of state.shapes.lines) {
    path(toRelative(l.points, l.relative), false);
    g.strokeStyle = "rgba(255, 0, 255, 0.9)"; g.stroke();
  }
  const d = state.drawing;
  if (d && d.points.length) {
    path(d.points, false);
    g.strokeStyle = "#4fb3ff"; g.stroke();
    for (const [x, y] of d.points.map(px)) { g.fillStyle = "#4fb3ff"; g.fillRect(x - 3, y - 3, 6, 6); }
  }
}

async function applyShapes() {
  if (!state.selected || !state.analytics) return;
  const body = { ...state.analytics, zones: state.shapes.zones, lines: state.shapes.lines };
  $("apply-status").textContent = "applying...";
  try {
    const view = await api("PUT", `/streams/${encodeURIComponent(state.selected)}/analytics`, body);
    state.analytics = view.analytics;
    $("yaml").value = view.yaml;
    $("apply-status").textContent = `applied to ${state.selected} at ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("apply-status").textContent = `not applied: ${e.message}`;
  }
}

// ---- the event timeline (server-sent events)
function eventItem(e) {
  const what = e.zone ? ` ${e.zone}` : e.line ? ` ${e.line} ${e.direction || ""}` : e.reason ? ` ${e.reason}` : "";
  const li = el("li", { "data-stream": e.stream, "data-type": e.type });
  if (e.snapshot) li.append(el("img", { src: `/snapshots/${e.snapshot}`, alt: "snapshot", loading: "lazy" }));
  li.append(el("span", { class: "muted", text: new Date(e.ts).toLocaleTimeString() }),
    el("span", { text: e.stream }), el("span", { class: "type", text: e.type }),
    el("span", { text: what + (e.track_id ? ` #${e.track_id.split(":").pop()}` : "") }));
  return li;
}

function visible(e) {
  const s = $("filter-stream").value, t = $("filter-type").value;
  return (!s || e.stream === s) && (!t || e.type === t);
}

function renderTimeline() {
  $("timeline").replaceChildren(...state.events.filter(visible).slice(0, 200).map(eventItem));
}

function startFeed() {
  const feed = new EventSource("/events");
  feed.onopen = () => { $("feed-status").textContent = "live"; };
  feed.onerror = () => { $("feed-status").textContent = "reconnecting..."; };
  feed.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    state.events.unshift(e);
    if (state.events.length > 1000) state.events.length = 1000;
    addOption($("filter-type"), e.type, state.types);
    addOption($("filter-stream"), e.stream, state.knownStreams);
    if (visible(e)) {
      $("timeline").prepend(eventItem(e));
      const tl = $("timeline");
      while (tl.children.length > 200) tl.lastChild.remove();
    }
  };
}

async function consolePage() {
  try {
    const info = await api("GET", "/info");
    if (info.grafana_url) { $("link-grafana").href = info.grafana_url; $("link-grafana").hidden = false; }
  } catch (e) { /* the console still works without it */ }
  $("logout").addEventListener("click", async (ev) => {
    ev.preventDefault();
    await fetch("/logout", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    location.reload();
  });
  $("live").addEventListener("change", showFrame);
  $("mode-zone").addEventListener("click", () => setMode("zone"));
  $("mode-line").addEventListener("click", () => setMode("line"));
  $("finish").addEventListener("click", finishDrawing);
  $("cancel").addEventListener("click", cancelDrawing);
  $("overlay").addEventListener("click", onStageClick);
  $("apply").addEventListener("click", applyShapes);
  $("frame").addEventListener("load", drawOverlay);
  window.addEventListener("resize", drawOverlay);
  $("filter-stream").addEventListener("change", renderTimeline);
  $("filter-type").addEventListener("change", renderTimeline);
  startFeed();
  await refreshStreams();
  setInterval(refreshStreams, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "login") loginPage(); else consolePage();
});
