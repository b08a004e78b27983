"use strict";
// GIA Gateway live page: one snapshot, then server-sent events; no page reloads, no framework.
// Data: /api/v1/live/stream (SSE), /api/v1/summary (energy balance + site layout), /api/v1/history
// (past flows from the energy registers), /api/v1/forecasts/{target}, /api/v1/flexibility, /healthz.
// Endpoints that answer 404 (not enabled on this gateway) show an explanation instead of a chart.
(() => {
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const S = {
    site: null, devices: {}, seen: {}, summary: null, summaryError: null, period: "today", target: "load",
    forecasts: {}, history: null, liveActual: { load: [], wind: [], pv: [] }, flex: undefined, health: null,
    connected: false, lastTs: null, dirty: new Set(), chart: null,
  };
  const page = (window.giaPage = { firstRenderMs: null, renders: 0, events: 0, chartDrawn: null });

  // ---- formatting ----------------------------------------------------------------------------
  const nf = (v, d) => v.toLocaleString(undefined, { minimumFractionDigits: d, maximumFractionDigits: d });
  function fmtPower(w) {
    if (w === null || w === undefined || Number.isNaN(w)) return "—";
    if (Math.abs(w) < 0.5) w = 0; // never "-0 W"
    const a = Math.abs(w);
    if (a >= 1e6) return nf(w / 1e6, 2) + " MW";
    if (a >= 1e3) return nf(w / 1e3, a >= 1e5 ? 0 : 1) + " kW";
    return nf(w, 0) + " W";
  }
  function fmtEnergy(wh) {
    if (wh === null || wh === undefined) return "—";
    const a = Math.abs(wh);
    if (a >= 1e6) return nf(wh / 1e6, a >= 1e8 ? 0 : 2) + " MWh";
    if (a >= 1e3) return nf(wh / 1e3, a >= 1e5 ? 0 : 1) + " kWh";
    return nf(wh, 0) + " Wh";
  }
  const UNIT = { degC: "°C", deg: "°", "1": "", "": "" };
  const DIGITS = { V: 1, A: 1, Hz: 2, "m/s": 1, "%": 0, degC: 1, deg: 0, rpm: 1, "1": 2, var: 0, VA: 0 };
  function fmtValue(q, s) {
    if (!s || s.value === null || s.value === undefined) return "invalid";
    if (s.unit === "W") return fmtPower(s.value);
    if (s.unit === "Wh") return fmtEnergy(s.value);
    if (s.unit === "var" || s.unit === "VA") return fmtPower(s.value).replace("W", s.unit);
    if (q === "status") return String(s.value);
    const d = DIGITS[s.unit] ?? 2;
    const u = UNIT[s.unit] ?? s.unit;
    return nf(s.value, d) + (u ? (u === "%" || u === "°" ? "" : " ") + u : "");
  }
  const pct = (x) => (x === null || x === undefined ? "—" : nf(100 * x, 0) + " %");
  const LABEL = {
    power_w: "Power", power_l1_w: "Power L1", power_l2_w: "Power L2", power_l3_w: "Power L3", dc_power_w: "DC power",
    voltage_l1_v: "Voltage L1", voltage_l2_v: "Voltage L2", voltage_l3_v: "Voltage L3",
    current_l1_a: "Current L1", current_l2_a: "Current L2", current_l3_a: "Current L3", frequency_hz: "Frequency",
    reactive_power_var: "Reactive power", apparent_power_va: "Apparent power", power_factor: "Power factor",
    energy_import_wh: "Energy in (register)", energy_export_wh: "Energy out (register)", wind_speed_ms: "Wind speed",
    wind_direction_deg: "Wind direction", rotor_speed_rpm: "Rotor speed", soc_pct: "State of charge",
    temperature_c: "Temperature", status: "Status code",
  };
  const CLASS_LABEL = { meter: "Meter", inverter: "PV inverter", wind_turbine: "Wind turbine", battery: "Battery" };
  const HIGHLIGHT = ["soc_pct", "wind_speed_ms", "energy_import_wh", "energy_export_wh", "frequency_hz", "voltage_l1_v"];
  const timeFmt = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  // ---- site layout: which device is grid / generation / storage / consumption ------------------
  function layout() {
    if (S.summary && S.summary.layout && Object.keys(S.summary.layout).length) return S.summary.layout;
    const out = {}; // fallback when the summary is not available: guess from the device class and id
    for (const [id, d] of Object.entries(S.devices)) {
      const c = d.class;
      if (c === "inverter") out[id] = { class: c, flow: "generation", source: "pv", renewable: true };
      else if (c === "wind_turbine") out[id] = { class: c, flow: "generation", source: "wind", renewable: true };
      else if (c === "battery") out[id] = { class: c, flow: "storage" };
      else out[id] = { class: c, flow: /grid|poc|main/.test(id) ? "grid" : "consumption" };
    }
    return out;
  }
  const COLOR = { grid: "var(--grid)", pv: "var(--pv)", wind: "var(--wind)", storage: "var(--battery)", consumption: "var(--load)", other: "var(--other)", chp: "var(--other)" };
  function deviceColor(id) {
    const l = layout()[id] || {};
    if (l.flow === "generation") return COLOR[l.source] || COLOR.other;
    return COLOR[l.flow] || COLOR.other;
  }

  // ---- live flows --------------------------------------------------------------------------------
  function liveFlows() {
    const L = layout();
    const f = { grid: null, storage: null, gen: {}, genRenewable: 0, metered: 0, meters: [], uncertain: new Set(), hasGrid: false };
    for (const [id, l] of Object.entries(L)) {
      const d = S.devices[id];
      if (!d || !l.flow) continue;
      const s = d.values && d.values.power_w;
      const bad = d.state !== "online" || !s || s.value === null || s.quality === "invalid" || s.quality === "stale";
      const key = l.flow === "generation" ? (l.source || "other") : l.flow;
      if (bad) f.uncertain.add(key);
      const p = s && s.value !== null ? s.value : 0;
      if (l.flow === "grid") { f.grid = (f.grid || 0) + p; f.hasGrid = true; }
      else if (l.flow === "storage") f.storage = (f.storage || 0) + p;
      else if (l.flow === "generation") {
        f.gen[key] = (f.gen[key] || 0) + p;
        if (l.renewable !== false) f.genRenewable += Math.max(0, p);
      } else if (l.flow === "consumption") { f.metered += p; f.meters.push([id, p]); }
    }
    const genTotal = Object.values(f.gen).reduce((a, b) => a + b, 0);
    f.consumption = f.hasGrid ? f.grid + genTotal + (f.storage || 0) : f.metered;
    const exportW = f.hasGrid ? Math.max(0, -f.grid) : 0;
    f.share = f.consumption > 0 ? Math.min(1, Math.max(0, f.genRenewable - exportW) / f.consumption) : null;
    return f;
  }

  // ---- energy flow diagram ----------------------------------------------------------------------
  const SVGNS = "http://www.w3.org/2000/svg";
  const ICON = {
    grid: "M8 22L12 3l4 19M6 8h12M5 13h14M9.6 13L14.8 22M14.4 13L9.2 22",
    pv: "M12 7.5a4.5 4.5 0 1 0 0 9a4.5 4.5 0 1 0 0-9M12 1v3M12 20v3M1 12h3M20 12h3M4.2 4.2l2.1 2.1M17.7 17.7l2.1 2.1M4.2 19.8l2.1-2.1M17.7 6.3l2.1-2.1",
    wind: "M12 11v12M9 23h6M12 11l-1-9 2 0zM12 11l8 4-1 1.6zM12 11l-8 4 1 1.6z",
    storage: "M7 5h10v17H7zM10 2h4v3M10 12h4M12 10v4",
    consumption: "M2 22V11l6 3.5V11l6 3.5V7l8 4v11zM6 18h2M11 18h2M16 18h2",
    other: "M12 3l3 6h6l-5 4 2 7-6-4-6 4 2-7-5-4h6z",
  };
  const POS = { pv: [105, 52], wind: [315, 52], grid: [52, 170], storage: [368, 170], other: [210, 268], chp: [210, 268] };
  const CENTER = [210, 150];
  const NAME = { grid: "Grid", pv: "Solar PV", wind: "Wind", storage: "Battery", other: "Other generation", chp: "CHP", consumption: "Site consumption" };

  function node(key, x, y, r, color) {
    const g = document.createElementNS(SVGNS, "g");
    g.setAttribute("class", "node");
    g.setAttribute("data-flow", key);
    g.setAttribute("transform", `translate(${x},${y})`);
    g.innerHTML = `<circle r="${r}" style="stroke:${color}"></circle>` +
      `<g transform="translate(-12,-12)" fill="none" stroke-width="1.7" stroke-linejoin="round" stroke-linecap="round" style="stroke:${color}"><path d="${ICON[key] || ICON.other}"></path></g>` +
      `<text class="label" y="${-r - 8}">${esc(NAME[key] || key)}</text><text class="value" y="${r + 18}">—</text>` +
      `<text class="note" y="${r + 33}"></text>`;
    return g;
  }
  let flowKeys = null;
  function renderFlow() {
    const f = liveFlows();
    const keys = [];
    if (f.hasGrid) keys.push("grid");
    for (const k of Object.keys(f.gen).sort()) keys.push(k);
    if (f.storage !== null) keys.push("storage");
    const sig = keys.join(",");
    const nodes = $("flow-nodes"), links = $("flow-links");
    if (sig !== flowKeys) {
      flowKeys = sig; nodes.textContent = ""; links.textContent = "";
      let otherSlot = 0;
      for (const k of keys) {
        let p = POS[k];
        if (!p) { p = [150 + 120 * otherSlot, 268]; otherSlot++; }
        const color = COLOR[k] || COLOR.other;
        const line = document.createElementNS(SVGNS, "path");
        const [cx, cy] = CENTER, dx = cx - p[0], dy = cy - p[1], len = Math.hypot(dx, dy);
        const ux = dx / len, uy = dy / len;
        line.setAttribute("d", `M${p[0] + ux * 34},${p[1] + uy * 34} L${cx - ux * 46},${cy - uy * 46}`);
        line.setAttribute("class", "link");
        line.setAttribute("data-flow", k);
        line.style.stroke = color;
        links.appendChild(line);
        nodes.appendChild(node(k, p[0], p[1], 30, color));
      }
      nodes.appendChild(node("consumption", CENTER[0], CENTER[1], 42, COLOR.consumption));
    }
    const values = { grid: f.grid, storage: f.storage, ...f.gen };
    const maxAbs = Math.max(1, ...keys.map((k) => Math.abs(values[k] || 0)), Math.abs(f.consumption || 0));
    for (const k of keys) {
      const v = values[k] || 0;
      const g = nodes.querySelector(`[data-flow="${k}"]`), line = links.querySelector(`[data-flow="${k}"]`);
      const idleW = Math.abs(v) < Math.max(50, maxAbs * 0.005);
      const label = k === "grid" || k === "storage" ? fmtPower(Math.abs(v)) : fmtPower(v);
      let note = "";
      if (k === "grid") note = idleW ? "balanced" : v > 0 ? "importing" : "exporting";
      else if (k === "storage") note = idleW ? "idle" : v > 0 ? "discharging" : "charging";
      else if (v < 0) note = "own use";
      g.querySelector(".value").textContent = label;
      g.querySelector(".note").textContent = note;
      g.querySelector(".value").setAttribute("data-w", String(Math.round(v)));
      g.classList.toggle("offline", f.uncertain.has(k));
      const toward = v > 0; // positive: into the site (import, production, discharge)
      const idle = idleW;
      line.setAttribute("class", "link" + (idle ? " idle" : " on") + (!toward && !idle ? " rev" : "") + (f.uncertain.has(k) ? " uncertain" : ""));
      line.style.strokeWidth = String(2 + 7 * Math.sqrt(Math.min(1, Math.abs(v) / maxAbs)));
      line.removeAttribute("marker-end"); line.removeAttribute("marker-start");
      if (!idle) line.setAttribute(toward ? "marker-end" : "marker-start", "url(#arrow)");
      let title = g.querySelector("title");
      if (!title) { title = document.createElementNS(SVGNS, "title"); g.appendChild(title); }
      title.textContent = k === "grid" ? (v >= 0 ? "importing from the grid" : "exporting to the grid")
        : k === "storage" ? (v >= 0 ? "battery discharging" : "battery charging") : (NAME[k] || k) + " producing";
    }
    const c = nodes.querySelector('[data-flow="consumption"]');
    c.querySelector(".value").textContent = fmtPower(f.consumption);
    c.querySelector(".value").setAttribute("data-w", String(Math.round(f.consumption || 0)));
    c.querySelector(".label").textContent = "Site consumption";
    c.classList.toggle("offline", f.uncertain.size > 0);
    $("flow-share").textContent = f.share === null ? "renewable —" : `renewable ${pct(f.share)} now`;
    return f;
  }

  // ---- devices ---------------------------------------------------------------------------------
  function deviceCard(id) {
    const el = document.createElement("article");
    el.className = "device";
    el.dataset.device = id;
    el.innerHTML = `<div class="device-head"><div><h3>${esc(id)}</h3><span class="cls"></span></div>` +
      `<span class="pill state state-unknown">unknown</span></div><div class="main num">—</div>` +
      `<table class="hl"></table><details><summary>all values</summary><table class="all"></table></details>` +
      `<div class="age"></div>`;
    return el;
  }
  function rows(values, names) {
    return names.filter((q) => values[q]).map((q) => {
      const s = values[q];
      const mark = s.quality !== "good" ? `<span class="q-mark" title="quality: ${esc(s.quality)}">${esc(s.quality)}</span>` : "";
      return `<tr class="q-${esc(s.quality)}"><td>${esc(LABEL[q] || q)}${mark}</td><td class="v" data-q="${esc(q)}">${esc(fmtValue(q, s))}</td></tr>`;
    }).join("");
  }
  function renderDevice(id) {
    const d = S.devices[id];
    const root = $("devices");
    let el = root.querySelector(`[data-device="${CSS.escape(id)}"]`);
    if (!el) { el = deviceCard(id); root.appendChild(el); }
    const l = layout()[id] || {};
    el.style.setProperty("--c", deviceColor(id));
    const role = l.flow === "generation" ? `${l.source || "other"} generation` : l.flow === "storage" ? "storage" : l.flow || "";
    el.querySelector(".cls").textContent = [CLASS_LABEL[d.class] || d.class || "", role].filter(Boolean).join(" · ");
    const st = el.querySelector(".state");
    st.textContent = d.state; st.className = `pill state state-${d.state}`;
    el.classList.toggle("is-offline", d.state === "offline");
    const v = d.values || {};
    const p = v.power_w;
    let main = p ? fmtValue("power_w", p) : "—";
    if (p && l.flow === "grid" && p.value !== null && Math.abs(p.value) >= 50) main += `<small>${p.value >= 0 ? "import" : "export"}</small>`;
    if (p && l.flow === "storage" && p.value !== null && Math.abs(p.value) >= 50) main += `<small>${p.value > 0 ? "discharging" : "charging"}</small>`;
    const mainEl = el.querySelector(".main");
    mainEl.innerHTML = main;
    mainEl.classList.toggle("muted", !p || p.quality !== "good" || d.state !== "online");
    el.querySelector(".hl").innerHTML = rows(v, HIGHLIGHT.filter((q) => v[q]).slice(0, 3));
    el.querySelector(".all").innerHTML = rows(v, Object.keys(v).sort());
  }
  function renderAges() {
    const now = Date.now();
    for (const el of document.querySelectorAll(".device")) {
      const id = el.dataset.device, d = S.devices[id];
      if (!d) continue;
      const seen = S.seen[id];
      let text = "no reading yet";
      if (seen) {
        const s = Math.round((now - seen) / 1000);
        text = s < 2 ? "updated just now" : `updated ${s} s ago`;
      } else if (d.last_reading) text = "last reading " + timeFmt(new Date(d.last_reading));
      if (d.state === "offline") text = "offline" + (d.last_reading ? ` · last reading ${timeFmt(new Date(d.last_reading))}` : "");
      el.querySelector(".age").textContent = text;
    }
  }

  // ---- warnings ----------------------------------------------------------------------------------
  function renderWarnings() {
    const items = [];
    if (!S.connected && page.firstRenderMs !== null) items.push(["bad", "Live connection lost", "reconnecting… values shown may be old"]);
    const now = Date.now();
    for (const [id, d] of Object.entries(S.devices)) {
      if (d.state === "offline") {
        items.push(["bad", `${id} is offline`, d.last_reading ? `last reading ${timeFmt(new Date(d.last_reading))}` : "no reading yet"]);
        continue;
      }
      const bad = Object.entries(d.values || {}).filter(([, s]) => s.quality !== "good");
      if (bad.length) {
        const byQ = {};
        for (const [q, s] of bad) (byQ[s.quality] = byQ[s.quality] || []).push(LABEL[q] || q);
        for (const [qual, names] of Object.entries(byQ)) items.push([qual === "invalid" ? "bad" : "", `${id}: ${names.length} ${qual} value${names.length > 1 ? "s" : ""}`, names.slice(0, 4).join(", ") + (names.length > 4 ? "…" : "")]);
      }
      if (d.state === "online" && S.seen[id] && now - S.seen[id] > 60000) items.push(["", `${id}: no new reading`, `for ${Math.round((now - S.seen[id]) / 1000)} s`]);
    }
    if (S.summary) {
      const per = S.summary[S.period];
      // One line per kind of problem, not per channel: "no register reading" for nine channels on a
      // fresh gateway is one fact.
      const groups = new Map();
      for (const w of (per && per.warnings) || []) {
        const m = /^([^:]+): (.*)$/.exec(w);
        const [chan, what] = m ? [m[1], m[2]] : ["", w];
        if (!groups.has(what)) groups.set(what, []);
        if (chan) groups.get(what).push(chan);
      }
      for (const [what, chans] of groups) {
        const who = chans.length > 3 ? `${chans.length} channels` : chans.join(", ");
        items.push(["", "Energy balance", who ? `${who}: ${what}` : what]);
      }
      if (S.period === "month" && S.summary.month && S.summary.month.provisional) items.push(["info", "Provisional month", `${S.summary.month.label}: figures are provisional until the month is closed and its report is signed`]);
    }
    if (S.health && Array.isArray(S.health.reasons)) {
      for (const r of S.health.reasons) if (!/^device .* is offline$/.test(r)) items.push(["", "Gateway", r]);
    }
    const list = $("warning-list");
    list.innerHTML = items.map(([cls, title, detail]) => `<li class="${cls}"><b>${esc(title)}</b><span>${esc(detail)}</span></li>`).join("");
    $("warnings").hidden = items.length === 0;
  }

  // ---- energy balance ----------------------------------------------------------------------------
  function sinceText(iso, tz) {
    const opts = S.period === "month" ? { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
    try { return new Date(iso).toLocaleString([], { ...opts, timeZone: tz }) + ` (${tz})`; } catch { return new Date(iso).toLocaleString(); }
  }
  function renderBalance() {
    const box = $("balance");
    if (!S.summary) {
      box.dataset.state = S.summaryError ? "unavailable" : "loading";
      box.innerHTML = S.summaryError
        ? `<div class="empty"><div><strong>Energy balance not available</strong>${esc(S.summaryError)}</div></div>`
        : `<p class="muted">Loading…</p>`;
      return;
    }
    const per = S.summary[S.period];
    const i = per.indicators;
    box.dataset.state = "ready";
    const src = i.generation_by_source_wh || {};
    const cons = i.consumption_wh || 0;
    const ren = i.renewable_consumed_on_site_wh || 0;
    const imp = Math.min(cons - ren, i.grid_import_wh || 0);
    const w = (x) => (cons > 0 ? Math.max(0, Math.min(100, (100 * x) / cons)) : 0);
    const badge = S.period === "month" ? `<span class="badge prov" title="until the month is closed and its report signed">provisional</span>` : `<span class="badge okb">so far</span>`;
    const srcRows = Object.entries(src).map(([k, v]) => `<div><dt><span class="dot" style="background:${COLOR[k] || COLOR.other}"></span>${esc(NAME[k] || k)}</dt><dd>${fmtEnergy(v)}</dd></div>`).join("");
    box.innerHTML = `<div class="share"><div class="share-top"><div><span class="big num" data-k="renewable_share">${pct(i.renewable_share)}</span> <span class="muted">renewable</span></div>${badge}</div>` +
      `<div class="bar" title="consumption covered by on-site renewables / grid import / other"><span style="width:${w(ren)}%;background:var(--absorb)"></span><span style="width:${w(imp)}%;background:var(--grid)"></span></div>` +
      `<div class="muted small">${esc(per.label)} · since ${esc(sinceText(per.start, S.summary.timezone))}</div></div>` +
      `<dl class="kv"><div><dt><span class="dot" style="background:var(--load)"></span>Consumption</dt><dd data-k="consumption_wh">${fmtEnergy(i.consumption_wh)}</dd></div>` +
      `<div><dt>Generation</dt><dd data-k="generation_wh">${fmtEnergy(i.generation_wh)}</dd></div>${srcRows}` +
      `<div><dt><span class="dot" style="background:var(--grid)"></span>Grid import</dt><dd>${fmtEnergy(i.grid_import_wh)}</dd></div>` +
      `<div><dt>Grid export</dt><dd>${fmtEnergy(i.grid_export_wh)}</dd></div>` +
      `<div><dt><span class="dot" style="background:var(--battery)"></span>Battery charged</dt><dd>${fmtEnergy(i.storage_charge_wh)}</dd></div>` +
      `<div><dt>Battery discharged</dt><dd>${fmtEnergy(i.storage_discharge_wh)}</dd></div>` +
      `<div><dt>Self-consumption</dt><dd>${fmtEnergy(i.self_consumption_wh)}</dd></div>` +
      `<div><dt>Self-sufficiency</dt><dd>${pct(i.self_sufficiency)}</dd></div></dl>`;
  }

  // ---- forecast vs actual chart --------------------------------------------------------------------
  const TARGET_FLOW = { load: "consumption", wind: "generation_wind", pv: "generation_pv" };
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  function actualSeries(target) {
    const pts = [];
    if (S.history && S.history.flows && S.history.flows[TARGET_FLOW[target]]) {
      const half = (S.history.step_s || 900) / 2;
      S.history.ts.forEach((t, k) => {
        const v = S.history.flows[TARGET_FLOW[target]][k];
        if (v !== null && v !== undefined) pts.push([t / 1000 + half, v]);
      });
    }
    const lastHist = pts.length ? pts[pts.length - 1][0] : -Infinity;
    for (const p of S.liveActual[target]) if (p[0] > lastHist) pts.push(p);
    return pts;
  }
  function renderChart() {
    const box = $("fc-chart");
    const fc = S.forecasts[S.target];
    const note = $("fc-note");
    if (fc === undefined) { box.dataset.state = "loading"; return; }
    if (fc === null || fc.error) {
      if (S.chart) { S.chart.destroy(); S.chart = null; }
      box.dataset.state = "disabled";
      const detail = fc && fc.detail ? fc.detail : "";
      box.innerHTML = `<div class="empty"><div><strong>No forecast yet</strong>${esc(detail || "Enable the forecasting section of the configuration to see forecasts with P10–P90 bands here.")}</div></div>`;
      note.textContent = "";
      return;
    }
    if (typeof uPlot === "undefined") return;
    const actual = actualSeries(S.target);
    const xs = new Map();
    for (const [t, v] of actual) xs.set(t, { a: v });
    for (const p of fc.points || []) {
      const t = Date.parse(p.ts) / 1000 + (fc.resolution_s || 0) / 2;
      const e = xs.get(t) || {};
      Object.assign(e, { p10: p.p10, p50: p.p50, p90: p.p90 });
      xs.set(t, e);
    }
    const x = [...xs.keys()].sort((a, b) => a - b);
    const col = (k) => x.map((t) => { const v = xs.get(t)[k]; return v === undefined ? null : v; });
    const data = [x, col("a"), col("p10"), col("p50"), col("p90")];
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
    const color = S.target === "load" ? css("--load") : S.target === "wind" ? css("--wind") : css("--pv");
    const width = Math.max(280, box.clientWidth || 600);
    const opts = {
      width, height: width < 500 ? 220 : 280, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [axis, { ...axis, values: (u, vals) => vals.map((v) => fmtPower(v)), size: 70 }],
      series: [
        {},
        { label: "actual", stroke: color, width: 2, value: (u, v) => fmtPower(v) },
        { label: "P10", stroke: "transparent", value: (u, v) => fmtPower(v) },
        { label: "forecast P50", stroke: css("--ink"), width: 1.5, dash: [6, 4], value: (u, v) => fmtPower(v) },
        { label: "P90", stroke: "transparent", value: (u, v) => fmtPower(v) },
      ],
      bands: [{ series: [4, 2], fill: "rgba(100,116,139,0.22)" }],
      hooks: { draw: [(u) => {
        page.chartDrawn = Date.now();
        const now = (S.lastTs || Date.now()) / 1000;
        const px = u.valToPos(now, "x", true);
        if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) return;
        const c = u.ctx; c.save(); c.strokeStyle = css("--muted"); c.setLineDash([2, 3]); c.beginPath();
        c.moveTo(px, u.bbox.top); c.lineTo(px, u.bbox.top + u.bbox.height); c.stroke(); c.restore();
      }] },
    };
    if (S.chart && S.chart.__target === S.target && box.dataset.state === "ready") S.chart.setData(data);
    else {
      if (S.chart) S.chart.destroy();
      box.innerHTML = "";
      S.chart = new uPlot(opts, data, box);
      S.chart.__target = S.target;
      box.dataset.state = "ready";
    }
    const meta = fc.metadata || {};
    note.textContent = `Forecast generated ${timeFmt(new Date(fc.generated_at))}` + (meta.method ? ` · ${meta.method}` : "") +
      (meta.kind && meta.kind !== "model" ? ` (${meta.kind}${meta.reason ? ": " + meta.reason : ""})` : "") + ". Band: P10–P90.";
  }

  // ---- flexibility timeline ----------------------------------------------------------------------
  const LEVEL_TEXT = { absorb: "use more now", neutral: "normal", reduce: "use less now" };
  function intervalsOf(sig) {
    if (!sig) return [];
    const arr = Array.isArray(sig) ? sig : sig.intervals || sig.signal || [];
    return arr.filter((i) => i && i.start && i.end);
  }
  const mid = (v) => (v === null || v === undefined ? null : typeof v === "object" ? (v.p50 ?? null) : v);
  function renderFlex() {
    const box = $("flex");
    const chip = $("flex-now");
    if (S.flex === undefined) return;
    if (S.flex === null || S.flex.error) {
      box.dataset.state = "disabled";
      chip.textContent = "—";
      box.innerHTML = `<div class="empty"><div><strong>Flexibility signal not available</strong>${esc((S.flex && S.flex.detail) || "Configure flexibility assets and forecasting to get absorb / reduce signals.")}</div></div>`;
      return;
    }
    const iv = intervalsOf(S.flex);
    if (!iv.length) { box.dataset.state = "empty"; box.innerHTML = `<div class="empty">No intervals in the current signal.</div>`; return; }
    const t0 = Date.parse(iv[0].start), t1 = Date.parse(iv[iv.length - 1].end), span = Math.max(1, t1 - t0);
    const now = S.lastTs || Date.now();
    const cur = iv.find((i) => Date.parse(i.start) <= now && now < Date.parse(i.end)) || iv[0];
    chip.textContent = LEVEL_TEXT[cur.level] || cur.level;
    chip.style.color = `var(--${cur.level === "reduce" ? "bad" : cur.level === "absorb" ? "ok" : "muted"})`;
    const segs = iv.map((i) => {
      const w = (100 * (Date.parse(i.end) - Date.parse(i.start))) / span;
      const title = `${timeFmt(new Date(i.start))}–${timeFmt(new Date(i.end))}: ${i.level}` + (mid(i.surplus_w) !== null ? `, surplus ${fmtPower(mid(i.surplus_w))}` : "");
      return `<span class="seg-${esc(i.level)}" style="width:${w}%" title="${esc(title)}"></span>`;
    }).join("");
    const nowPct = Math.max(0, Math.min(100, (100 * (now - t0)) / span));
    const hhmm = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const rowsHtml = iv.slice(0, 24).map((i) => {
      const tip = `upward ${fmtPower(i.upward_w)}, downward ${fmtPower(i.downward_w)}`;
      return `<div title="${esc(tip)}"><span class="lvl">${hhmm(i.start)} <span class="dot" style="background:var(--${esc(i.level)})"></span>${esc(i.level)}</span><span class="num muted">${mid(i.surplus_w) !== null ? "surplus " + fmtPower(mid(i.surplus_w)) : ""}</span></div>`;
    }).join("");
    box.dataset.state = "ready";
    box.innerHTML = `<div style="position:relative"><div class="track">${segs}</div><div title="now" style="position:absolute;top:-4px;bottom:-4px;left:${nowPct}%;width:2px;background:var(--ink)"></div></div>` +
      `<div class="flex-axis"><span>${hhmm(iv[0].start)}</span><span>${hhmm(iv[iv.length - 1].end)}</span></div>` +
      `<div class="flex-legend"><span><span class="dot" style="background:var(--absorb)"></span>absorb: surplus, use more</span><span><span class="dot" style="background:var(--neutral)"></span>neutral</span><span><span class="dot" style="background:var(--reduce)"></span>reduce: shortage, use less</span></div>` +
      `<div class="flex-rows">${rowsHtml}</div>`;
  }

  // ---- reports -------------------------------------------------------------------------------------
  function renderReports() {
    if (!S.site) return;
    const cur = S.summary ? S.summary.month.label : new Date().toISOString().slice(0, 7);
    const months = [];
    let [y, m] = cur.split("-").map(Number);
    for (let k = 0; k < 4; k++) {
      months.push(`${y}-${String(m).padStart(2, "0")}`);
      m -= 1; if (m === 0) { m = 12; y -= 1; }
    }
    const base = `/api/v1/sites/${encodeURIComponent(S.site)}`;
    $("reports").innerHTML = months.map((mo, k) => k === 0
      ? `<li data-month="${mo}"><span><b>${mo}</b> <span class="badge prov">in progress</span></span><span class="muted small">signed after the month ends</span></li>`
      : `<li data-month="${mo}"><span><b>${mo}</b></span><span><a href="${base}/reports/${mo}?format=pdf">PDF</a><a href="${base}/reports/${mo}?format=json">signed JSON</a><a href="${base}/reports/${mo}?format=csv">CSV</a><a href="${base}/evidence/${mo}">evidence</a></span></li>`).join("");
  }

  // ---- render loop ------------------------------------------------------------------------------
  let scheduled = false;
  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; renderAll(); });
  }
  function renderAll() {
    for (const id of S.dirty) if (S.devices[id]) renderDevice(id);
    S.dirty.clear();
    renderFlow();
    renderWarnings();
    renderAges();
    if (S.lastTs) $("clock").textContent = timeFmt(new Date(S.lastTs));
    page.renders++;
    if (page.firstRenderMs === null && Object.keys(S.devices).length) {
      page.firstRenderMs = performance.now();
      performance.mark("gia:first-render");
    }
  }
  function recordActual(tsMs) {
    const f = liveFlows();
    const t = tsMs / 1000;
    const add = (k, v) => {
      if (v === null || v === undefined) return;
      const buf = S.liveActual[k];
      if (buf.length && t - buf[buf.length - 1][0] < 10) buf[buf.length - 1] = [buf[buf.length - 1][0], v];
      else buf.push([t, v]);
      if (buf.length > 9000) buf.splice(0, buf.length - 9000);
    };
    add("load", f.consumption);
    add("wind", f.gen.wind ?? null);
    add("pv", f.gen.pv ?? null);
  }

  // ---- data sources ----------------------------------------------------------------------------
  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    let body = null;
    try { body = await r.json(); } catch { body = null; }
    return { status: r.status, body };
  }
  async function loadSummary() {
    try {
      const { status, body } = await getJSON("/api/v1/summary");
      if (status === 200) {
        S.summary = body; S.summaryError = null;
        if (body.site_name) $("site-name").textContent = `${body.site_name} · ${body.site}`;
      }
      else if (status === 404) S.summaryError = "This gateway does not provide today's and this month's balance (GET /api/v1/summary).";
      else S.summaryError = (body && body.detail) || `the gateway answered HTTP ${status}`;
    } catch (e) { S.summaryError = "gateway not reachable"; }
    renderBalance(); renderReports(); schedule();
  }
  async function loadHistory() {
    try {
      const { status, body } = await getJSON("/api/v1/history?hours=24&step_s=900");
      if (status === 200) S.history = body;
    } catch (e) { /* keep the live actuals only */ }
    renderChart();
  }
  async function loadForecast(target) {
    try {
      const { status, body } = await getJSON(`/api/v1/forecasts/${target}`);
      S.forecasts[target] = status === 200 ? body : { error: (body && body.error) || status, detail: body && body.detail };
      // the first forecast comes seconds to a minute after start (training): ask again soon, not in 5 min
      if (status === 404) setTimeout(() => { if (target === S.target) loadForecast(target); }, 15000);
    } catch (e) { S.forecasts[target] = { error: "network", detail: "gateway not reachable" }; }
    if (target === S.target) renderChart();
  }
  async function loadFlex() {
    try {
      const { status, body } = await getJSON("/api/v1/flexibility");
      S.flex = status === 200 ? body : { error: (body && body.error) || status, detail: body && body.detail };
    } catch (e) { S.flex = { error: "network", detail: "gateway not reachable" }; }
    renderFlex();
  }
  async function loadHealth() {
    try {
      const { body } = await getJSON("/healthz");
      S.health = body;
    } catch (e) { S.health = null; }
    schedule();
  }

  function connect() {
    const es = new EventSource("/api/v1/live/stream");
    const conn = $("conn");
    const setConn = (ok, text) => {
      S.connected = ok;
      conn.textContent = text;
      conn.className = "pill " + (ok ? "pill-live" : "pill-wait");
    };
    es.addEventListener("snapshot", (e) => {
      const snap = JSON.parse(e.data);
      page.events++;
      const first = S.site === null;
      S.site = snap.site;
      S.devices = snap.devices;
      const now = Date.now();
      for (const [id, d] of Object.entries(S.devices)) {
        S.dirty.add(id);
        if (d.last_reading) S.seen[id] = S.seen[id] || now;
        for (const s of Object.values(d.values || {})) {
          const t = Date.parse(s.ts);
          if (!S.lastTs || t > S.lastTs) S.lastTs = t;
        }
      }
      $("site-name").textContent = S.summary && S.summary.site_name ? `${S.summary.site_name} · ${snap.site}` : `site ${snap.site}`;
      document.title = `GIA Gateway · ${snap.site}`;
      setConn(true, "live");
      if (first) renderReports();
      schedule();
    });
    es.addEventListener("samples", (e) => {
      const ev = JSON.parse(e.data);
      page.events++;
      const d = S.devices[ev.device];
      if (!d) return;
      d.values = Object.assign(d.values || {}, ev.values);
      d.state = "online";
      let ts = null;
      for (const s of Object.values(ev.values)) { const t = Date.parse(s.ts); if (ts === null || t > ts) ts = t; }
      if (ts !== null) { d.last_reading = new Date(ts).toISOString(); if (!S.lastTs || ts > S.lastTs) S.lastTs = ts; }
      S.seen[ev.device] = Date.now();
      S.dirty.add(ev.device);
      if (ts !== null && ev.values.power_w) recordActual(ts);
      schedule();
    });
    es.addEventListener("availability", (e) => {
      const ev = JSON.parse(e.data);
      page.events++;
      const d = S.devices[ev.device];
      if (!d) return;
      d.state = ev.state;
      S.dirty.add(ev.device);
      schedule();
      loadHealth();
    });
    es.onopen = () => setConn(true, "live");
    es.onerror = () => { setConn(false, "reconnecting"); schedule(); };
  }

  // ---- UI wiring --------------------------------------------------------------------------------
  function tabs(container, attr, onPick) {
    for (const b of container.querySelectorAll("button")) {
      b.addEventListener("click", () => {
        for (const o of container.querySelectorAll("button")) o.setAttribute("aria-selected", String(o === b));
        onPick(b.dataset[attr]);
      });
    }
  }
  tabs(document.querySelector(".balance-card .seg"), "period", (p) => { S.period = p; renderBalance(); renderWarnings(); });
  tabs($("fc-tabs"), "target", (t) => {
    S.target = t;
    if (S.chart) { S.chart.destroy(); S.chart = null; }
    $("fc-chart").dataset.state = "loading";
    if (S.forecasts[t] === undefined) loadForecast(t); else renderChart();
  });
  if ("ResizeObserver" in window) {
    let w = 0;
    new ResizeObserver((entries) => {
      const nw = Math.round(entries[0].contentRect.width);
      if (S.chart && Math.abs(nw - w) > 4) { w = nw; S.chart.setSize({ width: Math.max(280, nw), height: nw < 500 ? 220 : 280 }); }
    }).observe($("fc-chart"));
  }

  connect();
  loadSummary();
  loadHistory().then(() => loadForecast(S.target));
  loadFlex();
  loadHealth();
  setInterval(renderAges, 1000);
  setInterval(loadSummary, 60000);
  setInterval(loadFlex, 60000);
  setInterval(loadHealth, 30000);
  setInterval(() => { loadForecast(S.target); }, 300000);
  setInterval(() => { if (S.forecasts[S.target] && !S.forecasts[S.target].error) renderChart(); }, 15000);
  setInterval(loadHistory, 900000);
})();
