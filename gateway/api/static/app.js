"use strict";
// GIA Gateway live page: one snapshot, then server-sent events; no page reloads, no framework.
// Data: /api/v1/live/stream (SSE), /api/v1/summary (energy balance + site layout), /api/v1/history
// (past flows from the energy registers), /api/v1/forecasts/{target}, /api/v1/flexibility, /healthz.
// Endpoints that answer 404 (not enabled on this gateway) show an explanation instead of a chart.
(() => {
  const G = window.GIA;
  const { T, esc, fmtPower, fmtEnergy, pct, nf } = G;
  const $ = (id) => document.getElementById(id);
  const S = {
    site: null, devices: {}, seen: {}, summary: null, summaryError: null, period: "today", target: "load",
    forecasts: {}, history: null, liveActual: { load: [], wind: [], pv: [] }, flex: undefined, health: null,
    connected: false, lastTs: null, dirty: new Set(), chart: null, months: null,
  };
  const page = (window.giaPage = { firstRenderMs: null, renders: 0, events: 0, chartDrawn: null, chartAxis: null });
  const UNIT = { degC: "°C", deg: "°", "1": "", "": "" };
  const DIGITS = { V: 1, A: 1, Hz: 2, "m/s": 1, "%": 0, degC: 1, deg: 0, rpm: 1, "1": 3, var: 0, VA: 0 };
  function fmtValue(q, s) {
    if (!s || s.value === null || s.value === undefined) return T("invalid");
    if (s.unit === "W") return fmtPower(s.value);
    if (s.unit === "Wh") return fmtEnergy(s.value);
    if (s.unit === "var" || s.unit === "VA") return fmtPower(s.value).replace("W", s.unit);
    if (q === "status" || q === "serial_number") return String(s.value);
    const d = DIGITS[s.unit] ?? 2;
    const u = UNIT[s.unit] ?? s.unit;
    return nf(s.value, d) + (u ? (u === "°" ? "" : " ") + u : "");
  }
  const LABEL = {
    power_w: T("Power"), power_l1_w: T("Power L1"), power_l2_w: T("Power L2"), power_l3_w: T("Power L3"), dc_power_w: T("DC power"),
    voltage_l1_v: T("Voltage L1"), voltage_l2_v: T("Voltage L2"), voltage_l3_v: T("Voltage L3"),
    current_l1_a: T("Current L1"), current_l2_a: T("Current L2"), current_l3_a: T("Current L3"), frequency_hz: T("Frequency"),
    reactive_power_var: T("Reactive power"), apparent_power_va: T("Apparent power"), power_factor: T("Power factor"),
    energy_import_wh: T("Energy in (register)"), energy_export_wh: T("Energy out (register)"), wind_speed_ms: T("Wind speed"),
    wind_direction_deg: T("Wind direction"), rotor_speed_rpm: T("Rotor speed"), soc_pct: T("State of charge"),
    temperature_c: T("Temperature"), status: T("Status code"), serial_number: T("Serial number"),
  };
  const CLASS_LABEL = { meter: T("Meter"), inverter: T("PV inverter"), wind_turbine: T("Wind turbine"), battery: T("Battery") };
  const STATE = { online: T("online"), offline: T("offline"), unknown: T("unknown") };
  const QUALITY = { good: T("good"), estimated: T("estimated"), stale: T("stale"), invalid: T("invalid"), partial: T("partial"), unknown: T("unknown") };
  const HIGHLIGHT = ["soc_pct", "wind_speed_ms", "energy_import_wh", "energy_export_wh", "frequency_hz", "voltage_l1_v"];
  const timeFmt = (d) => G.timeS(d);
  const boot = G.boot;
  const sources = new Set((boot.site && boot.site.sources) || []);

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
    // Unknown stays unknown: a flow whose device is offline, unread or invalid is null, and every sum
    // that needs it (consumption, the renewable share) is null too, never a number counting it as 0.
    const L = layout();
    const f = { grid: null, storage: null, gen: {}, genRenewable: 0, metered: 0, meters: [], uncertain: new Set(), unknown: new Set(), hasGrid: false, hasStorage: false };
    for (const [id, l] of Object.entries(L)) {
      const d = S.devices[id];
      if (!d || !l.flow) continue;
      const s = d.values && d.values.power_w;
      const missing = d.state !== "online" || !s || s.value === null || s.value === undefined || s.quality === "invalid";
      const key = l.flow === "generation" ? (l.source || "other") : l.flow;
      if (l.flow === "grid") f.hasGrid = true;
      if (l.flow === "storage") f.hasStorage = true;
      if (missing) { f.unknown.add(key); f.uncertain.add(key); }
      else if (s.quality !== "good") f.uncertain.add(key);
      const p = missing ? null : s.value;
      const add = (a) => (a === null || p === null ? null : a + p);
      if (l.flow === "grid") f.grid = f.unknown.has("grid") ? null : add(f.grid === null ? 0 : f.grid);
      else if (l.flow === "storage") f.storage = f.unknown.has("storage") ? null : add(f.storage === null ? 0 : f.storage);
      else if (l.flow === "generation") {
        f.gen[key] = f.unknown.has(key) ? null : add(f.gen[key] === undefined || f.gen[key] === null ? 0 : f.gen[key]);
        if (p !== null && l.renewable !== false) f.genRenewable += Math.max(0, p);
      } else if (l.flow === "consumption") { f.metered = f.metered === null || p === null ? null : f.metered + p; f.meters.push([id, p]); if (p === null) f.unknown.add("consumption"); }
    }
    const gens = Object.values(f.gen);
    const genTotal = gens.some((v) => v === null) ? null : gens.reduce((a, b) => a + b, 0);
    if (f.hasGrid) {
      const parts = [f.grid, genTotal, f.hasStorage ? f.storage : 0];
      f.consumption = parts.some((v) => v === null) ? null : parts.reduce((a, b) => a + b, 0);
    } else f.consumption = f.metered;
    const exportW = f.hasGrid && f.grid !== null ? Math.max(0, -f.grid) : null;
    const renKnown = !Object.entries(f.gen).some(([, v]) => v === null);
    f.share = f.consumption !== null && f.consumption > 0 && renKnown && (exportW !== null || !f.hasGrid)
      ? Math.min(1, Math.max(0, f.genRenewable - (exportW || 0)) / f.consumption) : null;
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
  const NAME = { grid: T("Grid"), pv: T("Solar PV"), wind: T("Wind"), storage: T("Battery"), other: T("Other generation"), chp: T("CHP"), consumption: T("Site consumption") };

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
    if (f.hasStorage) keys.push("storage");
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
      const v = values[k];
      const known = v !== null && v !== undefined;
      const g = nodes.querySelector(`[data-flow="${k}"]`), line = links.querySelector(`[data-flow="${k}"]`);
      const idleW = !known || Math.abs(v) < Math.max(50, maxAbs * 0.005);
      const label = !known ? "—" : k === "grid" || k === "storage" ? fmtPower(Math.abs(v)) : fmtPower(v);
      let note = "";
      if (!known) note = T("no reading");
      else if (k === "grid") note = idleW ? T("balanced") : v > 0 ? T("importing") : T("exporting");
      else if (k === "storage") note = idleW ? T("idle") : v > 0 ? T("discharging") : T("charging");
      else if (v < 0) note = T("own use");
      g.querySelector(".value").textContent = label;
      g.querySelector(".note").textContent = note;
      if (known) g.querySelector(".value").setAttribute("data-w", String(Math.round(v)));
      else g.querySelector(".value").removeAttribute("data-w");
      g.classList.toggle("offline", f.uncertain.has(k));
      g.classList.toggle("unknown", !known);
      const toward = known && v > 0; // positive: into the site (import, production, discharge)
      const idle = idleW;
      line.setAttribute("class", "link" + (idle ? " idle" : " on") + (!toward && !idle ? " rev" : "") + (f.uncertain.has(k) ? " uncertain" : ""));
      line.style.strokeWidth = String(2 + 7 * Math.sqrt(Math.min(1, Math.abs(v || 0) / maxAbs)));
      line.removeAttribute("marker-end"); line.removeAttribute("marker-start");
      if (!idle) line.setAttribute(toward ? "marker-end" : "marker-start", "url(#arrow)");
      let title = g.querySelector("title");
      if (!title) { title = document.createElementNS(SVGNS, "title"); g.appendChild(title); }
      title.textContent = !known ? T("no reading: unknown, not zero") : k === "grid" ? (v >= 0 ? T("importing from the grid") : T("exporting to the grid"))
        : k === "storage" ? (v >= 0 ? T("battery discharging") : T("battery charging")) : T("{name} producing", { name: NAME[k] || k });
    }
    const c = nodes.querySelector('[data-flow="consumption"]');
    const cKnown = f.consumption !== null && f.consumption !== undefined;
    c.querySelector(".value").textContent = fmtPower(f.consumption);
    if (cKnown) c.querySelector(".value").setAttribute("data-w", String(Math.round(f.consumption)));
    else c.querySelector(".value").removeAttribute("data-w");
    c.querySelector(".note").textContent = cKnown ? "" : T("unknown");
    c.querySelector(".label").textContent = NAME.consumption;
    c.classList.toggle("offline", f.uncertain.size > 0);
    c.classList.toggle("unknown", !cKnown);
    $("flow-share").textContent = f.share === null ? T("renewable: unknown") : T("renewable {share} now", { share: pct(f.share) });
    return f;
  }

  // ---- devices ---------------------------------------------------------------------------------
  function deviceCard(id) {
    const el = document.createElement("article");
    el.className = "device";
    el.dataset.device = id;
    el.innerHTML = `<div class="device-head"><div><h3>${esc(id)}</h3><span class="cls"></span></div>` +
      `<span class="pill state state-unknown" data-state="unknown">${esc(STATE.unknown)}</span></div><div class="main num">—</div>` +
      `<table class="hl"></table><details><summary>${esc(T("all values"))}</summary><table class="all"></table></details>` +
      `<div class="age"></div><a class="trend-link small" href="/history?device=${encodeURIComponent(id)}#trend">${esc(T("trend"))}</a>`;
    return el;
  }
  function rows(values, names) {
    return names.filter((q) => values[q]).map((q) => {
      const s = values[q];
      const ql = QUALITY[s.quality] || s.quality;
      const mark = s.quality !== "good" ? `<span class="q-mark" title="${esc(T("quality"))}: ${esc(ql)}">${esc(ql)}</span>` : "";
      return `<tr class="q-${esc(s.quality)}"><td>${esc(LABEL[q] || q)}${mark}</td><td class="v" data-q="${esc(q)}">${esc(fmtValue(q, s))}</td></tr>`;
    }).join("");
  }
  const ROLE = { grid: T("grid connection"), storage: T("storage"), consumption: T("consumption"), auxiliary: T("auxiliary") };
  const SOURCE = { pv: T("PV"), wind: T("wind"), chp: T("CHP"), other: T("other") };
  function renderDevice(id) {
    const d = S.devices[id];
    const root = $("devices");
    let el = root.querySelector(`[data-device="${CSS.escape(id)}"]`);
    if (!el) { el = deviceCard(id); root.appendChild(el); }
    const l = layout()[id] || {};
    el.style.setProperty("--c", deviceColor(id));
    const role = l.flow === "generation" ? T("{source} generation", { source: SOURCE[l.source || "other"] || l.source }) : ROLE[l.flow] || "";
    el.querySelector(".cls").textContent = [CLASS_LABEL[d.class] || d.class || "", role].filter(Boolean).join(" · ");
    const st = el.querySelector(".state");
    st.textContent = STATE[d.state] || d.state; st.dataset.state = d.state; st.className = `pill state state-${d.state}`;
    el.classList.toggle("is-offline", d.state === "offline");
    const v = d.values || {};
    const p = v.power_w;
    let main = p ? fmtValue("power_w", p) : "—";
    if (p && l.flow === "grid" && p.value !== null && Math.abs(p.value) >= 50) main += `<small>${esc(p.value >= 0 ? T("import") : T("export"))}</small>`;
    if (p && l.flow === "storage" && p.value !== null && Math.abs(p.value) >= 50) main += `<small>${esc(p.value > 0 ? T("discharging") : T("charging"))}</small>`;
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
      let text = T("no reading yet");
      if (seen) {
        const s = Math.round((now - seen) / 1000);
        text = s < 2 ? T("updated just now") : T("updated {s} s ago", { s });
      } else if (d.last_reading) text = T("last reading {time}", { time: timeFmt(d.last_reading) });
      if (d.state === "offline") text = STATE.offline + (d.last_reading ? " · " + T("last reading {time}", { time: timeFmt(d.last_reading) }) : "");
      el.querySelector(".age").textContent = text;
    }
  }

  // The balance's channel problems (gateway/site/balance.py), translated, times in the site's zone.
  const TS = "(\\d{4}-\\d\\d-\\d\\dT[0-9:.]+Z)";
  const PROBLEMS = [
    [new RegExp("^no register reading in this period$"), () => T("no register reading in this period")],
    [new RegExp("^readings start at " + TS + ", after the period start$"), (m) => T("readings start at {time}, after the period start", { time: G.dateTime(m[1]) })],
    [new RegExp("^register went backwards"), () => T("the register went backwards (meter restart or replacement): left out, figures that need it are unknown")],
    [new RegExp("^last register reading at " + TS + "$"), (m) => T("last register reading at {time}", { time: G.dateTime(m[1]) })],
  ];
  function channelProblem(what) {
    for (const [rx, fn] of PROBLEMS) { const m = rx.exec(what); if (m) return fn(m); }
    return G.localiseTimes(what);
  }

  // ---- warnings: one notice -----------------------------------------------------------------------
  // A fresh demo used to show six banners in three time conventions; now one notice, one sentence per
  // fact, every time in the site's zone.
  function renderWarnings() {
    const items = [];
    if (!S.connected && page.firstRenderMs !== null) items.push(["bad", T("Live connection lost: reconnecting. The values shown are the last ones received.")]);
    const now = Date.now();
    const offline = [];
    for (const [id, d] of Object.entries(S.devices)) {
      if (d.state === "offline") { offline.push(id); continue; }
      const bad = Object.entries(d.values || {}).filter(([, s]) => s.quality !== "good");
      if (bad.length) {
        const byQ = {};
        for (const [q, s] of bad) (byQ[s.quality] = byQ[s.quality] || []).push(LABEL[q] || q);
        for (const [qual, names] of Object.entries(byQ)) items.push([qual === "invalid" ? "bad" : "", T("{device}: {quality} values: {names}", { device: id, quality: QUALITY[qual] || qual, names: names.slice(0, 4).join(", ") + (names.length > 4 ? "…" : "") })]);
      }
      if (d.state === "online" && S.seen[id] && now - S.seen[id] > 60000) items.push(["", T("{device}: no new reading for {s} s", { device: id, s: Math.round((now - S.seen[id]) / 1000) })]);
    }
    if (offline.length) items.unshift(["bad", T("Offline: {devices}.", { devices: offline.join(", ") })]);
    if (S.summary) {
      const per = S.summary[S.period];
      // One line per kind of problem, not per channel: "no register reading" for nine channels on a
      // fresh gateway is one fact.
      const groups = new Map();
      for (const w of (per && per.warnings) || []) {
        const m = /^([^:]+): (.*)$/.exec(w);
        const [chan, what] = m ? [m[1], m[2]] : ["", w];
        const text = channelProblem(what);
        if (!groups.has(text)) groups.set(text, []);
        if (chan) groups.get(text).push(chan);
      }
      for (const [text, chans] of groups) {
        const who = chans.length > 3 ? T("{n} channels", { n: chans.length }) : chans.join(", ");
        items.push(["", T("Energy balance, {who}: {what}", { who, what: text })]);
      }
      if (S.period === "month" && S.summary.month && S.summary.month.provisional) items.push(["info", T("{month}: figures are provisional until the month is closed and its report is signed.", { month: S.summary.month.label })]);
    }
    if (S.health && Array.isArray(S.health.reasons)) {
      for (const r of S.health.reasons) if (!/^device .* is offline$/.test(r)) items.push(["", G.localiseTimes(r)]);
    }
    const list = $("warning-list");
    const worst = items.some(([c]) => c === "bad") ? "bad" : items.every(([c]) => c === "info") ? "info" : "";
    $("warnings").className = "warnings notice " + worst;
    $("warnings-title").textContent = items.length === 1 ? T("1 notice") : T("{n} notices", { n: items.length });
    list.innerHTML = items.map(([cls, text]) => `<li class="${cls}">${esc(text)}</li>`).join("");
    $("warnings").hidden = items.length === 0;
    document.body.classList.toggle("disconnected", !S.connected && page.firstRenderMs !== null);
  }

  // ---- energy balance ----------------------------------------------------------------------------
  function renderBalance() {
    const box = $("balance");
    if (!S.summary) {
      box.dataset.state = S.summaryError ? "unavailable" : "loading";
      box.innerHTML = S.summaryError
        ? `<div class="empty"><div><strong>${esc(T("Energy balance not available"))}</strong>${esc(S.summaryError)}</div></div>`
        : `<p class="muted">${esc(T("Loading…"))}</p>`;
      return;
    }
    const per = S.summary[S.period];
    const i = per.indicators;
    const q = per.quality || {};
    box.dataset.state = "ready";
    const src = i.generation_by_source_wh || {};
    const cons = i.consumption_wh;
    const ren = i.renewable_consumed_on_site_wh;
    const known = (x) => x !== null && x !== undefined;
    const imp = known(cons) && known(ren) && known(i.grid_import_wh) ? Math.min(cons - ren, i.grid_import_wh) : null;
    const w = (x) => (known(x) && known(cons) && cons > 0 ? Math.max(0, Math.min(100, (100 * x) / cons)) : 0);
    const badge = S.period === "month" ? `<span class="badge prov" title="${esc(T("until the month is closed and its report signed"))}">${esc(T("provisional"))}</span>` : `<span class="badge okb">${esc(T("so far"))}</span>`;
    // a figure with an unusable input is unknown ("—", marked); a partial or stale one is marked too
    const mark = (key) => {
      const qq = q[key] || "good";
      return qq === "good" ? "" : `<span class="q-mark q-${qq}" title="${esc(T("quality"))}: ${esc(QUALITY[qq] || qq)}">${esc(QUALITY[qq] || qq)}</span>`;
    };
    const row = (label, key, value, dot) => `<div data-quality="${esc(q[key] || "good")}"><dt>${dot ? `<span class="dot" style="background:${dot}"></span>` : ""}${esc(label)}${mark(key)}</dt><dd data-k="${key}">${value}</dd></div>`;
    const srcRows = Object.entries(src).map(([k, v]) => row(NAME[k] || k, `generation_${k}_wh`, fmtEnergy(v), COLOR[k] || COLOR.other)).join("");
    const battery = boot.site && boot.site.has_battery;
    const shareQ = q.renewable_share || "good";
    const since = G.dateTime(per.start);
    box.innerHTML = `<div class="share"><div class="share-top"><div><span class="big num" data-k="renewable_share" data-quality="${esc(shareQ)}">${pct(i.renewable_share)}</span> <span class="muted">${esc(T("renewable"))}</span>${mark("renewable_share")}</div>${badge}</div>` +
      `<div class="bar" title="${esc(T("consumption covered by on-site renewables / grid import / other"))}"><span style="width:${w(ren)}%;background:var(--absorb)"></span><span style="width:${w(imp)}%;background:var(--grid)"></span></div>` +
      `<div class="muted small">${esc(per.label)} · ${esc(T("since {time}", { time: since }))}</div></div>` +
      `<dl class="kv">${row(T("Consumption"), "consumption_wh", fmtEnergy(cons), "var(--load)")}` +
      row(T("Generation"), "generation_wh", fmtEnergy(i.generation_wh)) + srcRows +
      row(T("Grid import"), "grid_import_wh", fmtEnergy(i.grid_import_wh), "var(--grid)") +
      row(T("Grid export"), "grid_export_wh", fmtEnergy(i.grid_export_wh)) +
      (battery ? row(T("Battery charged"), "storage_charge_wh", fmtEnergy(i.storage_charge_wh), "var(--battery)") + row(T("Battery discharged"), "storage_discharge_wh", fmtEnergy(i.storage_discharge_wh)) : "") +
      row(T("Self-consumption"), "self_consumption_wh", fmtEnergy(i.self_consumption_wh)) +
      row(T("Self-sufficiency"), "self_sufficiency", pct(i.self_sufficiency)) + `</dl>`;
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
      const detail = fc && fc.error === "no_forecast" ? T("The first forecast arrives shortly after the agent starts; if it never does, forecasting is disabled in the configuration.")
        : fc && fc.detail ? fc.detail : "";
      box.innerHTML = `<div class="empty"><div><strong>${esc(T("No forecast yet"))}</strong>${esc(detail ? G.localiseTimes(detail) : T("Enable the forecasting section of the configuration to see forecasts with P10–P90 bands here."))}</div></div>`;
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
    // One point (a forecast just started, no history yet) gives uPlot a zero-width time range and an
    // axis of repeated labels: give the axis a sane span around it.
    const res = fc.resolution_s || 3600;
    const xRange = x.length < 2 ? (x.length ? [x[0] - 6 * res, x[0] + 6 * res] : null) : null;
    const col = (k) => x.map((t) => { const v = xs.get(t)[k]; return v === undefined ? null : v; });
    const data = [x, col("a"), col("p10"), col("p50"), col("p90")];
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
    const color = S.target === "load" ? css("--load") : S.target === "wind" ? css("--wind") : css("--pv");
    const width = Math.max(280, box.clientWidth || 600);
    const opts = {
      width, height: width < 500 ? 220 : 280, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, ...(xRange ? { range: () => xRange } : {}) } },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), G.tz),
      axes: [{ ...axis, values: [[3600 * 24, "{D}.{M}.", null, null, null, null, null, null, 1], [3600, "{HH}:{mm}", "\n{D}.{M}.", null, null, null, null, null, 1], [60, "{HH}:{mm}", "\n{D}.{M}.", null, null, null, null, null, 1]] }, { ...axis, values: (u, vals) => vals.map((v) => fmtPower(v)), size: 70 }],
      series: [
        { label: T("Time"), value: (u, v) => (v === null ? "—" : G.dateTime(v * 1000)) },
        { label: T("actual"), stroke: color, width: 2, value: (u, v) => fmtPower(v), points: { show: x.length < 3 } },
        { label: "P10", stroke: "transparent", value: (u, v) => fmtPower(v) },
        { label: T("forecast (median)"), stroke: css("--ink"), width: 1.5, dash: [6, 4], value: (u, v) => fmtPower(v), points: { show: x.length < 3 } },
        { label: "P90", stroke: "transparent", value: (u, v) => fmtPower(v) },
      ],
      bands: [{ series: [4, 2], fill: "rgba(100,116,139,0.22)" }],
      hooks: { draw: [(u) => {
        page.chartDrawn = Date.now();
        page.chartAxis = { spanS: u.scales.x.max - u.scales.x.min, labels: (u.axes[0]._values || []).slice() };
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
    $("fc-note").dataset.kind = meta.kind || "model";
    $("fc-note").textContent = T("Forecast made {time}.", { time: G.dateTime(fc.generated_at) }) + " " + methodText(meta) + " " + T("The band covers 80 % of outcomes (P10–P90).");
  }
  // Method names are for engineers; say what they mean, and hide the ones we cannot explain.
  function methodText(meta) {
    const kind = meta.kind || "model";
    const m = String(meta.method || "");
    let what = "";
    if (kind === "baseline") {
      const base = /persistence/.test(m) ? T("the same hours of the previous days") : /clear.?sky/.test(m) ? T("a clear-sky estimate") : /climatolog|mean|profile/.test(m) ? T("typical values for the hour and weekday") : "";
      what = base ? T("Simple estimate from {what}: not enough history for a trained model yet.", { what: base }) : T("Simple estimate: not enough history for a trained model yet.");
    } else if (kind === "empty") what = T("No forecast could be made.");
    else what = /hgb|gradient|quantile/.test(m) ? T("Trained model (gradient boosting on history and weather).") : T("Trained model.");
    return what;
  }

  // ---- flexibility timeline ----------------------------------------------------------------------
  // One word per level everywhere (chip, legend, rows): absorb / neutral / reduce, each explained once.
  const LEVEL = { absorb: T("absorb"), neutral: T("neutral"), reduce: T("reduce") };
  const LEVEL_HINT = { absorb: T("surplus: use more"), neutral: T("no action needed"), reduce: T("shortage: use less") };
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
      const detail = S.flex && S.flex.error === "no_signal" ? T("No signal yet: flexibility is disabled, or the first forecast has not arrived.") : (S.flex && S.flex.detail) || T("Configure flexibility assets and forecasting to get absorb / reduce signals.");
      box.innerHTML = `<div class="empty"><div><strong>${esc(T("Flexibility signal not available"))}</strong>${esc(detail)}</div></div>`;
      return;
    }
    const iv = intervalsOf(S.flex);
    if (!iv.length) { box.dataset.state = "empty"; box.innerHTML = `<div class="empty">${esc(T("No intervals in the current signal."))}</div>`; return; }
    const t0 = Date.parse(iv[0].start), t1 = Date.parse(iv[iv.length - 1].end), span = Math.max(1, t1 - t0);
    const now = S.lastTs || Date.now();
    const cur = iv.find((i) => Date.parse(i.start) <= now && now < Date.parse(i.end)) || iv[0];
    chip.textContent = `${LEVEL[cur.level] || cur.level} · ${LEVEL_HINT[cur.level] || ""}`;
    chip.dataset.level = cur.level;
    chip.style.color = `var(--${cur.level === "reduce" ? "bad" : cur.level === "absorb" ? "ok" : "muted"})`;
    const segs = iv.map((i) => {
      const w = (100 * (Date.parse(i.end) - Date.parse(i.start))) / span;
      const title = `${G.time(i.start)}–${G.time(i.end)}: ${LEVEL[i.level] || i.level}` + (mid(i.surplus_w) !== null ? `, ${T("surplus")} ${fmtPower(mid(i.surplus_w))}` : "");
      return `<span class="seg-${esc(i.level)}" style="width:${w}%" title="${esc(title)}"></span>`;
    }).join("");
    const nowPct = Math.max(0, Math.min(100, (100 * (now - t0)) / span));
    // hour ticks along the track, every 3 h (6 h on a phone), in the site's zone
    const every = box.clientWidth < 360 ? 6 : 3;
    const ticks = [];
    for (let t = Math.ceil(t0 / 3600000) * 3600000; t <= t1; t += 3600000) {
      if (G.hourOf(t) % every === 0) ticks.push(`<span style="left:${(100 * (t - t0)) / span}%">${esc(G.time(t))}</span>`);
    }
    const rowsHtml = iv.slice(0, 24).map((i) => {
      const tip = `${T("upward")} ${fmtPower(i.upward_w)}, ${T("downward")} ${fmtPower(i.downward_w)}`;
      return `<div title="${esc(tip)}"><span class="lvl">${G.time(i.start)} <span class="dot" style="background:var(--${esc(i.level)})"></span>${esc(LEVEL[i.level] || i.level)}</span><span class="num muted">${mid(i.surplus_w) !== null ? esc(T("surplus")) + " " + fmtPower(mid(i.surplus_w)) : ""}</span></div>`;
    }).join("");
    box.dataset.state = "ready";
    box.innerHTML = `<div style="position:relative"><div class="track">${segs}</div><div title="${esc(T("now"))}" class="now-line" style="left:${nowPct}%"></div></div>` +
      `<div class="flex-ticks" aria-label="${esc(T("hours"))}">${ticks.join("")}</div>` +
      `<div class="flex-legend">${["absorb", "neutral", "reduce"].map((l) => `<span><span class="dot" style="background:var(--${l})"></span>${esc(LEVEL[l])}: ${esc(LEVEL_HINT[l])}</span>`).join("")}</div>` +
      `<div class="flex-rows">${rowsHtml}</div>`;
  }

  // ---- reports: only months the ledger covers, links only for who can use them ---------------------
  function renderReports() {
    if (!S.site) return;
    const user = boot.user || {};
    const note = $("reports-note");
    const months = S.months;
    if (months === null) { $("reports").innerHTML = `<li class="muted">${esc(T("Loading…"))}</li>`; return; }
    if (!months.length) { note.textContent = T("No month has energy-register readings yet: reports appear once the meters have been read."); $("reports").innerHTML = ""; return; }
    note.textContent = user.certifier ? T("Signed reports and their evidence for certifiers.")
      : T("Signed reports and evidence need the certifier role: sign in with a certifier token to download them.");
    const base = `/api/v1/sites/${encodeURIComponent(S.site)}`;
    $("reports").innerHTML = months.slice(0, 6).map((m) => {
      const mo = m.month;
      const label = G.monthName(Date.UTC(Number(mo.slice(0, 4)), Number(mo.slice(5, 7)) - 1, 15));
      if (m.state === "open") return `<li data-month="${mo}"><span><b>${esc(label)}</b> <span class="badge prov">${esc(T("in progress"))}</span></span><span class="muted small">${esc(T("signed after the month ends"))}</span></li>`;
      const links = user.certifier
        ? `<a href="${base}/reports/${mo}?format=pdf">PDF</a><a href="${base}/reports/${mo}?format=json">${esc(T("signed JSON"))}</a><a href="${base}/reports/${mo}?format=csv">CSV</a><a href="${base}/evidence/${mo}">${esc(T("evidence"))}</a>`
        : `<span class="muted small">${esc(T("certifier role needed"))}</span>`;
      return `<li data-month="${mo}"><span><b>${esc(label)}</b></span><span>${links}</span></li>`;
    }).join("");
  }
  async function loadMonths() {
    if (!S.site) return;
    const { status, body } = await G.getJSON(`/api/v1/sites/${encodeURIComponent(S.site)}/reports`);
    S.months = status === 200 ? body.months : [];
    renderReports();
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
    if (S.lastTs) $("clock").textContent = timeFmt(S.lastTs);
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
  const getJSON = G.getJSON;
  async function loadSummary() {
    try {
      const { status, body } = await getJSON("/api/v1/summary");
      if (status === 200) { S.summary = body; S.summaryError = null; }
      else if (status === 404) S.summaryError = T("This gateway does not provide today's and this month's balance.");
      else S.summaryError = (body && body.detail) || T("the gateway answered HTTP {status}", { status });
    } catch (e) { S.summaryError = T("gateway not reachable"); }
    renderBalance(); schedule();
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
    } catch (e) { S.forecasts[target] = { error: "network", detail: T("gateway not reachable") }; }
    if (target === S.target) renderChart();
  }
  async function loadFlex() {
    try {
      const { status, body } = await getJSON("/api/v1/flexibility");
      S.flex = status === 200 ? body : { error: (body && body.error) || status, detail: body && body.detail };
    } catch (e) { S.flex = { error: "network", detail: T("gateway not reachable") }; }
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
    page.stream = es;
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
      document.title = `GIA Gateway · ${snap.site}`;
      setConn(true, T("live"));
      if (first) loadMonths();
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
      loadSummary();
    });
    es.onopen = () => setConn(true, T("live"));
    es.onerror = () => {
      setConn(false, T("reconnecting"));
      for (const id of Object.keys(S.devices)) S.dirty.add(id);
      schedule();
    };
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
  for (const b of $("fc-tabs").querySelectorAll("button")) if (b.dataset.target !== "load" && !sources.has(b.dataset.target)) b.remove();
  G.header("live");
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
