"use strict";
// History page: week / month / year of the energy balance (GET /api/v1/history/energy, from the energy
// registers), and one device's trend with zoom (GET /api/v1/devices/{id}/trend). Unknown stays unknown:
// a period whose figures the server could not compute shows a dash and no bar, never a zero.
(() => {
  const G = window.GIA;
  const { T, esc, fmtEnergy, fmtPower, pct } = G;
  const $ = (id) => document.getElementById(id);
  const page = (window.giaHistory = { energyDrawn: null, trendDrawn: null, loads: 0 });
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const S = { view: "month", anchor: null, energy: null, chart: null, trend: null, tchart: null, zoom: null, hours: 24 };
  // 24-hour clock and day.month on the time axis, in the site's zone (uPlot's tzDate)
  const TIME_AXIS = [[3600 * 24 * 28, "{MMM}", "\n{YYYY}", null, null, null, null, null, 1], [3600 * 24, "{D}.{M}.", "\n{YYYY}", null, null, null, null, null, 1], [3600, "{HH}:{mm}", "\n{D}.{M}.", null, null, null, null, null, 1], [60, "{HH}:{mm}", "\n{D}.{M}.", null, null, null, null, null, 1], [1, "{HH}:{mm}:{ss}", "\n{D}.{M}.", null, null, null, null, null, 1]];
  const QUALITY = { good: "", stale: T("stale"), partial: T("partial"), unknown: T("unknown") };

  // ---- the anchor date moves by a week, a month or a year ----------------------------------------
  const today = () => new Intl.DateTimeFormat("en-CA", { timeZone: G.tz }).format(new Date()); // YYYY-MM-DD
  function shift(iso, view, k) {
    const [y, m, d] = iso.split("-").map(Number);
    const dt = new Date(Date.UTC(y, m - 1, d));
    if (view === "week") dt.setUTCDate(dt.getUTCDate() + 7 * k);
    else if (view === "month") { dt.setUTCDate(1); dt.setUTCMonth(dt.getUTCMonth() + k); }
    else { dt.setUTCDate(1); dt.setUTCFullYear(dt.getUTCFullYear() + k); }
    return dt.toISOString().slice(0, 10);
  }
  function periodLabel(p, view) {
    const mid = Date.parse(p.start) + 12 * 3600e3;
    if (view === "year") return G.monthName(mid);
    return G.day(mid);
  }

  async function loadEnergy() {
    const box = $("energy-chart");
    box.dataset.state = "loading";
    const { status, body } = await G.getJSON(`/api/v1/history/energy?view=${S.view}&date=${S.anchor}`);
    page.loads++;
    if (status !== 200) {
      box.dataset.state = "error";
      box.innerHTML = `<div class="empty"><div><strong>${esc(T("History not available"))}</strong>${esc((body && body.detail) || "")}</div></div>`;
      return;
    }
    S.energy = body;
    const ps = body.periods;
    const first = ps[0], last = ps[ps.length - 1];
    $("period-label").textContent = S.view === "year" ? first.label.slice(0, 4)
      : S.view === "month" ? G.monthName(Date.parse(first.start) + 86400e3)
      : `${G.day(Date.parse(first.start) + 43200e3)} – ${G.day(Date.parse(last.start) + 43200e3)}`;
    $("next").disabled = ps.some((p) => p.state !== "closed");
    renderEnergy();
  }

  function renderEnergy() {
    const ps = S.energy.periods;
    const box = $("energy-chart");
    const get = (p, k) => (p.indicators && p.indicators[k] !== undefined ? p.indicators[k] : null);
    const x = ps.map((_, k) => k);
    const kwh = (v) => (v === null ? null : v / 1000);
    const data = [x, ps.map((p) => kwh(get(p, "consumption_wh"))), ps.map((p) => kwh(get(p, "generation_wh"))),
      ps.map((p) => { const v = get(p, "renewable_share"); return v === null ? null : 100 * v; })];
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
    const width = Math.max(280, box.clientWidth || 600);
    const labels = ps.map((p) => (S.view === "year" ? G.monthName(Date.parse(p.start) + 86400e3).split(" ")[0].slice(0, 3) : p.label.slice(8, 10).replace(/^0/, "")));
    const bars = (align) => uPlot.paths.bars({ size: [0.38, 40], align });
    const opts = {
      width, height: width < 500 ? 220 : 300, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false, range: [-0.6, ps.length - 0.4] }, kWh: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.08)] }, pct: { range: [0, 100] } },
      axes: [
        { ...axis, values: (u, vals) => vals.map((v) => (Number.isInteger(v) ? labels[v] || "" : "")), space: 18 },
        { ...axis, scale: "kWh", values: (u, vals) => vals.map((v) => G.nf(v, 0)), size: 60, label: "kWh" },
        { ...axis, scale: "pct", side: 1, grid: { show: false }, values: (u, vals) => vals.map((v) => `${v} %`), size: 50 },
      ],
      series: [
        { label: S.view === "year" ? T("Month") : T("Day"), value: (u, v) => (v === null || !ps[v] ? "—" : periodLabel(ps[v], S.view)) },
        { label: T("Consumption"), scale: "kWh", fill: css("--load") + "cc", stroke: css("--load"), paths: bars(-1), points: { show: false }, value: (u, v) => fmtEnergy(v === null ? null : v * 1000) },
        { label: T("Generation"), scale: "kWh", fill: css("--absorb") + "cc", stroke: css("--absorb"), paths: bars(1), points: { show: false }, value: (u, v) => fmtEnergy(v === null ? null : v * 1000) },
        { label: T("Renewable share"), scale: "pct", stroke: css("--ink"), width: 1.5, points: { show: true, size: 5 }, value: (u, v) => (v === null ? "—" : G.nf(v, 0) + " %") },
      ],
      hooks: { draw: [() => { page.energyDrawn = Date.now(); }] },
    };
    if (S.chart) S.chart.destroy();
    box.innerHTML = "";
    S.chart = new uPlot(opts, data, box);
    box.dataset.state = "ready";
    const cell = (p, k, f) => {
      const q = p.quality ? p.quality[k] : "unknown";
      const v = get(p, k);
      const m = q && q !== "good" ? ` <span class="q-mark q-${esc(q)}" title="${esc(T("quality"))}: ${esc(QUALITY[q] || q)}">${esc(QUALITY[q] || q)}</span>` : "";
      return `<td class="n" data-k="${k}" data-quality="${esc(q || "good")}">${f(v)}${m}</td>`;
    };
    const head = `<tr><th>${esc(S.view === "year" ? T("Month") : T("Day"))}</th><th class="n">${esc(T("Consumption"))}</th><th class="n">${esc(T("Generation"))}</th><th class="n">${esc(T("Grid import"))}</th><th class="n">${esc(T("Grid export"))}</th><th class="n">${esc(T("Renewable share"))}</th></tr>`;
    const rows = ps.filter((p) => p.state !== "future" || S.view === "year").map((p) => p.state === "future"
      ? `<tr class="muted" data-state="future"><td>${esc(periodLabel(p, S.view))}</td><td class="n" colspan="5">${esc(T("not yet"))}</td></tr>`
      : `<tr data-state="${esc(p.state)}"><td>${esc(periodLabel(p, S.view))}${p.state === "open" ? ` <span class="badge prov">${esc(T("so far"))}</span>` : ""}</td>${cell(p, "consumption_wh", fmtEnergy)}${cell(p, "generation_wh", fmtEnergy)}${cell(p, "grid_import_wh", fmtEnergy)}${cell(p, "grid_export_wh", fmtEnergy)}${cell(p, "renewable_share", pct)}</tr>`).join("");
    $("energy-table").innerHTML = `<thead>${head}</thead><tbody>${rows}</tbody>`;
  }

  // ---- device trend with zoom --------------------------------------------------------------------
  async function loadDevices() {
    const { status, body } = await G.getJSON("/api/v1/live");
    if (status !== 200) return;
    const devs = body.devices || {};
    const want = new URLSearchParams(location.search).get("device");
    $("trend-device").innerHTML = Object.keys(devs).sort().map((id) => `<option value="${esc(id)}"${id === want ? " selected" : ""}>${esc(id)}</option>`).join("");
    S.devs = devs;
    fillQuantities();
    loadTrend();
  }
  function fillQuantities() {
    const d = S.devs[$("trend-device").value] || { values: {} };
    const qs = Object.keys(d.values || {}).filter((q) => typeof d.values[q].value === "number" && q !== "status").sort();
    if (!qs.includes("power_w")) qs.unshift("power_w");
    $("trend-quantity").innerHTML = qs.map((q) => `<option value="${esc(q)}"${q === "power_w" ? " selected" : ""}>${esc(q)}</option>`).join("");
  }
  async function loadTrend() {
    const box = $("trend-chart");
    const dev = $("trend-device").value, q = $("trend-quantity").value;
    if (!dev) return;
    const end = S.zoom ? S.zoom[1] : Date.now();
    const start = S.zoom ? S.zoom[0] : end - S.hours * 3600e3;
    const points = Math.min(1200, Math.max(60, Math.round((box.clientWidth || 600) / 2)));
    const url = `/api/v1/devices/${encodeURIComponent(dev)}/trend?quantity=${encodeURIComponent(q)}&start=${new Date(start).toISOString()}&end=${new Date(end).toISOString()}&points=${points}`;
    const { status, body } = await G.getJSON(url);
    if (status !== 200) {
      box.dataset.state = "error";
      box.innerHTML = `<div class="empty"><div><strong>${esc(T("Trend not available"))}</strong>${esc((body && body.detail) || "")}</div></div>`;
      return;
    }
    S.trend = body;
    renderTrend(start, end);
  }
  function renderTrend(start, end) {
    const box = $("trend-chart");
    const t = S.trend;
    const half = (t.bucket_s || 0) / 2;
    const x = t.ts.map((ms) => ms / 1000 + (t.sampled ? 0 : half));
    const unitFmt = (v) => (v === null || v === undefined ? "—" : t.unit === "W" ? fmtPower(v) : t.unit === "Wh" ? fmtEnergy(v) : `${G.nf(v, 2)} ${t.unit}`);
    const data = t.min ? [x, t.mean, t.min, t.max] : [x, t.mean];
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
    const width = Math.max(280, box.clientWidth || 600);
    const series = [{ label: T("Time"), value: (u, v) => (v === null ? "—" : G.dateTime(v * 1000)) },
      { label: T("mean"), stroke: css("--accent"), width: 1.5, value: (u, v) => unitFmt(v), points: { show: x.length < 3 } }];
    if (t.min) series.push({ label: T("min"), stroke: "transparent", value: (u, v) => unitFmt(v) }, { label: T("max"), stroke: "transparent", value: (u, v) => unitFmt(v) });
    const opts = {
      width, height: width < 500 ? 220 : 280,
      cursor: { drag: { x: true, y: false, setScale: true } },
      scales: { x: { time: true, range: () => [start / 1000, end / 1000] } },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), G.tz),
      axes: [{ ...axis, values: TIME_AXIS }, { ...axis, values: (u, vals) => vals.map((v) => unitFmt(v)), size: 76 }],
      series,
      bands: t.min ? [{ series: [3, 2], fill: "rgba(15,118,110,0.15)" }] : [],
      hooks: {
        draw: [() => { page.trendDrawn = Date.now(); }],
        setSelect: [(u) => {
          if (u.select.width < 4) return;
          const a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
          S.zoom = [a * 1000, b * 1000];
          $("trend-reset").hidden = false;
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          loadTrend(); // the finer detail of the zoomed range, from the gateway
        }],
      },
    };
    if (S.tchart) S.tchart.destroy();
    box.innerHTML = "";
    S.tchart = new uPlot(opts, data, box);
    box.dataset.state = "ready";
    const src = t.source === "influxdb" ? T("from InfluxDB") : t.sampled ? T("sampled from the gateway's ledger") : T("from the gateway's ledger");
    $("trend-note").textContent = `${src}; ${T("{n} points", { n: x.length })}. ${t.note ? T("Instant readings older than the ledger's retention are not kept on the gateway.") + " " : ""}${T("Drag across the chart to zoom in; the gateway then sends the finer detail.")}`;
  }

  // ---- wiring ------------------------------------------------------------------------------------
  function tabs(container, attr, onPick) {
    for (const b of container.querySelectorAll("button")) {
      b.addEventListener("click", () => {
        for (const o of container.querySelectorAll("button")) o.setAttribute("aria-selected", String(o === b));
        onPick(b.dataset[attr]);
      });
    }
  }
  G.header("history");
  S.anchor = today();
  tabs($("views"), "view", (v) => { S.view = v; loadEnergy(); });
  $("prev").addEventListener("click", () => { S.anchor = shift(S.anchor, S.view, -1); loadEnergy(); });
  $("next").addEventListener("click", () => { S.anchor = shift(S.anchor, S.view, 1); loadEnergy(); });
  tabs($("trend-range"), "hours", (h) => { S.hours = Number(h); S.zoom = null; $("trend-reset").hidden = true; loadTrend(); });
  $("trend-device").addEventListener("change", () => { fillQuantities(); S.zoom = null; loadTrend(); });
  $("trend-quantity").addEventListener("change", () => loadTrend());
  $("trend-reset").addEventListener("click", () => { S.zoom = null; $("trend-reset").hidden = true; loadTrend(); });
  if ("ResizeObserver" in window) {
    let w = 0;
    new ResizeObserver((entries) => {
      const nw = Math.round(entries[0].contentRect.width);
      if (Math.abs(nw - w) > 4) {
        w = nw;
        if (S.chart) S.chart.setSize({ width: Math.max(280, nw), height: nw < 500 ? 220 : 300 });
        if (S.tchart) S.tchart.setSize({ width: Math.max(280, nw), height: nw < 500 ? 220 : 280 });
      }
    }).observe($("energy-chart"));
  }
  loadEnergy();
  loadDevices();
})();
