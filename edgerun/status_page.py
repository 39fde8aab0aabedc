"""The status page served at ``GET /``: one self-contained HTML file, no external scripts.

It polls ``/v1/status`` every 2 seconds (with the page's own bearer token when
one is given as ``#token=...`` in the URL, percent-decoded) and shows the device,
its accelerators, each model's version and delegate, MQTT state, outbox depth,
the last OTA events, and a chart of end-to-end p50 latency and throughput over
the last minutes, drawn on a canvas. Counts are the exact ones since start
(``inferences``), throughput their change between two polls: the latency window
keeps 4,096 samples, so a count taken from it stops at 4,096. A poll that fails
(a missing token: 401) says so and shows no figures rather than empty ones.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgerun</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;max-width:60em}
 h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.2em 0 .3em}
 table{border-collapse:collapse} td,th{padding:.15em .8em .15em 0;text-align:left}
 .ok{color:#1a7f37} .bad{color:#cf222e} .muted{color:#777} canvas{border:1px solid #ddd}
</style></head><body>
<h1>edgerun <span id="device" class="muted"></span></h1>
<div id="error" class="bad"></div>
<div>accelerators: <span id="accelerators">-</span> &middot; MQTT: <span id="mqtt">-</span>
 &middot; outbox: <span id="outbox">-</span> &middot; updated <span id="updates">0</span> times</div>
<h2>Models</h2><table id="models"><tr><th>model</th><th>version</th><th>delegate</th><th>count</th>
<th>p50 ms</th><th>p95 ms</th><th>inf/s</th></tr></table>
<h2>Latency and throughput</h2><canvas id="chart" width="640" height="180"></canvas>
<div class="muted">blue: p50 latency (ms, left); green: inferences per second (right)</div>
<h2>Last OTA events</h2><table id="ota"><tr><th>time</th><th>update / command</th><th>model</th>
<th>version</th><th>state</th><th>reason</th></tr></table>
<script>
"use strict";
const token = (raw => { try { return raw && decodeURIComponent(raw); } catch (e) { return raw; } })(
  (location.hash.match(/token=([^&]+)/) || [])[1]);
const history = []; let updates = 0, last = null;  // last: the previous poll's exact counts and time
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; }
function clear(table) { while (table.rows.length > 1) table.deleteRow(1); }
function draw() {
  const c = document.getElementById("chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (history.length < 2) return;
  const maxL = Math.max(...history.map(h => h.p50), 0.001), maxT = Math.max(...history.map(h => h.rate), 0.001);
  [["#0969da", h => h.p50 / maxL], ["#1a7f37", h => h.rate / maxT]].forEach(([color, y]) => {
    g.strokeStyle = color; g.beginPath();
    history.forEach((h, i) => { const px = i * c.width / (history.length - 1), py = c.height - 5 - y(h) * (c.height - 10);
      i ? g.lineTo(px, py) : g.moveTo(px, py); });
    g.stroke();
  });
  g.fillStyle = "#555"; g.fillText(maxL.toFixed(3) + " ms", 4, 12); g.fillText(maxT.toFixed(1) + " /s", c.width - 60, 12);
}
async function refresh() {
  try {
    const r = await fetch("/v1/status", {headers: token ? {Authorization: "Bearer " + token} : {}});
    if (!r.ok) {
      const why = await r.json().then(b => b.detail, () => r.statusText);
      throw new Error("HTTP " + r.status + (why ? ": " + why : "")
                      + (r.status === 401 ? " (open the page as /#token=...)" : ""));
    }
    const s = await r.json(); document.getElementById("error").textContent = "";
    document.getElementById("device").textContent = s.device || "";
    document.getElementById("accelerators").textContent = (s.accelerators || []).join(", ") || "none (CPU)";
    const m = document.getElementById("mqtt");
    if (!s.mqtt) { m.textContent = "off"; m.className = "muted"; }
    else { m.textContent = (s.mqtt.connected ? "connected to " : "disconnected from ") + s.mqtt.broker
           + (s.mqtt.last_error ? " (" + s.mqtt.last_error + ")" : ""); m.className = s.mqtt.connected ? "ok" : "bad"; }
    document.getElementById("outbox").textContent = s.mqtt ? s.mqtt.outbox + " record(s)" : "-";
    const table = document.getElementById("models"); clear(table);
    const now = performance.now(), counts = s.inferences || {}; let p50 = 0, rate = 0;
    for (const [name, info] of Object.entries(s.models || {})) {
      const met = ((s.metrics || {}).models || {})[name] || {}; const lat = met.latency_ms || {};
      const count = counts[name] ?? 0;
      const perS = last && Math.max(0, count - (last.counts[name] ?? 0)) / Math.max((now - last.t) / 1000, 0.001);
      const row = table.insertRow(); cell(row, name); cell(row, info.version); cell(row, info.delegate);
      cell(row, count); cell(row, lat.p50 ?? "-"); cell(row, lat.p95 ?? "-");
      cell(row, last ? perS.toFixed(1) : "-");
      p50 = Math.max(p50, lat.p50 || 0); rate += perS || 0;
    }
    if (last) { history.push({p50, rate}); if (history.length > 150) history.shift(); draw(); }
    last = {t: now, counts};
    const ota = document.getElementById("ota"); clear(ota);
    for (const e of (s.ota_events || []).slice().reverse()) {
      const row = ota.insertRow(); cell(row, new Date(e.ts * 1000).toLocaleTimeString());
      cell(row, e.update_id || e.command_id || "-"); cell(row, e.model || "-"); cell(row, e.version || "-");
      cell(row, e.state, ["rejected", "failed", "rolled_back"].includes(e.state) ? "bad" : "ok"); cell(row, e.reason || "");
    }
    document.getElementById("updates").textContent = ++updates;
  } catch (err) { document.getElementById("error").textContent = "status unavailable: " + err.message; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
