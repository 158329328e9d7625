// The listener page: a WebSocket brings 80 ms PCM frames decoded by the server (8-byte
// header: frame index and levels, little-endian uint32; then int16 samples) and JSON
// stats; an AudioWorklet plays them; the slider sends the level cap to the server.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const HISTORY = 300; // points on the graph (about 100 s at one stats message per 320 ms)

// Exposed for the end-to-end test and for the curious (devtools).
const state = (window.mimirate = {
  connected: false, frames: 0, levels: 0, cap: 8, stats: [], audio: "none",
  played: 0, underruns: 0, errors: [],
});

const $ = (id) => document.getElementById(id);
let ws = null;
let ctx = null;
let player = null;

if (params.get("room")) $("room").value = params.get("room");
$("cap").value = params.get("cap") || "8";
$("cap-value").textContent = $("cap").value;

async function startAudio(sampleRate) {
  if (ctx) return;
  ctx = new AudioContext({ sampleRate, latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("/static/player-worklet.js");
  player = new AudioWorkletNode(ctx, "mimirate-player", { outputChannelCount: [1] });
  player.port.onmessage = (e) => {
    state.played = e.data.played / sampleRate;
    state.underruns = e.data.underruns;
    $("played").textContent = state.played.toFixed(1);
  };
  player.connect(ctx.destination);
  await ctx.resume();
  state.audio = ctx.state;
}

function sendCap() {
  const levels = parseInt($("cap").value, 10);
  $("cap-value").textContent = levels;
  state.cap = levels;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "cap", levels }));
}

function connect() {
  if (ws) ws.close();
  const room = $("room").value;
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(room)) { $("status").textContent = "bad room name"; return; }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  ws = new WebSocket(`${scheme}//${location.host}/ws/${room}${query}`);
  ws.binaryType = "arraybuffer";
  $("status").textContent = "connecting…";
  ws.onopen = () => { state.connected = true; $("status").textContent = `room ${room}`; };
  ws.onclose = () => { state.connected = false; $("status").textContent = "disconnected"; };
  ws.onerror = () => state.errors.push("websocket error");
  ws.onmessage = async (e) => {
    if (typeof e.data === "string") {
      const msg = JSON.parse(e.data);
      if (msg.type === "hello") {
        $("model").textContent = `${msg.model}, ${msg.num_levels} levels`;
        $("cap").max = msg.num_levels;
        try { await startAudio(msg.sample_rate); } catch (err) { state.errors.push(String(err)); }
        sendCap();
      } else if (msg.type === "stats") {
        onStats(msg);
      }
      return;
    }
    const head = new Uint32Array(e.data, 0, 2);
    const pcm = new Int16Array(e.data, 8);
    const f32 = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) f32[i] = pcm[i] / 32768;
    state.frames += 1;
    state.levels = head[1];
    if (player) player.port.postMessage(f32, [f32.buffer]);
  };
}

function onStats(msg) {
  state.stats.push(msg);
  if (state.stats.length > HISTORY) state.stats.shift();
  $("levels").textContent = msg.levels;
  $("kbps").textContent = msg.wire_kbps.toFixed(2);
  $("delay").textContent = Math.round(msg.delay_ms);
  $("loss").textContent = (100 * msg.loss).toFixed(1);
  draw();
}

// Four stacked strip charts, each scaled to its own range.
function draw() {
  const c = $("graph");
  const g = c.getContext("2d");
  const series = [
    ["levels", (s) => s.levels, 32, "#1f77b4"],
    ["wire kbit/s", (s) => s.wire_kbps, null, "#2ca02c"],
    ["delay ms", (s) => s.delay_ms, null, "#ff7f0e"],
    ["loss %", (s) => 100 * s.loss, null, "#d62728"],
  ];
  const h = c.height / series.length;
  g.clearRect(0, 0, c.width, c.height);
  g.font = "12px system-ui, sans-serif";
  series.forEach(([name, get, fixedMax, color], k) => {
    const vals = state.stats.map(get);
    const max = fixedMax || Math.max(1, ...vals) * 1.1;
    const top = k * h;
    g.strokeStyle = "#eee";
    g.strokeRect(0, top, c.width, h);
    g.fillStyle = "#555";
    g.fillText(`${name} (max ${max.toFixed(fixedMax ? 0 : 1)})`, 6, top + 14);
    g.strokeStyle = color;
    g.beginPath();
    vals.forEach((v, i) => {
      const x = (i / (HISTORY - 1)) * c.width;
      const y = top + h - 4 - (v / max) * (h - 20);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  });
}

$("cap").addEventListener("input", sendCap);
$("play").addEventListener("click", () => { connect(); if (ctx) ctx.resume(); });
if (params.get("autoplay") === "1") connect();
