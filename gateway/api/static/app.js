"use strict";
// Live status page: one snapshot, then server-sent events; no page reloads.
const state = { devices: {} };
const fmt = (v, unit) => v === null ? "—" : (Math.abs(v) >= 1000 && unit === "W" ? (v / 1000).toFixed(2) + " kW"
  : (Math.abs(v) >= 1e6 && unit === "Wh" ? (v / 1e6).toFixed(3) + " MWh" : (+v.toFixed(2)) + " " + unit));
function render() {
  const root = document.getElementById("devices");
  root.innerHTML = "";
  for (const [id, d] of Object.entries(state.devices)) {
    const el = document.createElement("article");
    el.className = "device"; el.dataset.device = id;
    const rows = Object.entries(d.values || {}).map(([q, s]) =>
      `<tr class="q-${s.quality}"><td>${q}</td><td class="v" data-q="${q}">${fmt(s.value, s.unit)}</td></tr>`).join("");
    el.innerHTML = `<h2><span>${id} <small>${d.class || ""}</small></span><span class="state state-${d.state}">${d.state}</span></h2>
      <table>${rows}</table>`;
    root.appendChild(el);
  }
}
function connect() {
  const es = new EventSource("/api/v1/live/stream");
  const conn = document.getElementById("conn");
  es.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    document.getElementById("site").textContent = "· " + snap.site;
    state.devices = snap.devices; render(); conn.textContent = "live";
  });
  es.addEventListener("samples", (e) => {
    const ev = JSON.parse(e.data); const d = state.devices[ev.device]; if (!d) return;
    d.values = Object.assign(d.values || {}, ev.values); d.state = "online"; render();
  });
  es.addEventListener("availability", (e) => {
    const ev = JSON.parse(e.data); const d = state.devices[ev.device]; if (!d) return;
    d.state = ev.state; render();
  });
  es.onerror = () => { conn.textContent = "reconnecting…"; };
}
connect();
