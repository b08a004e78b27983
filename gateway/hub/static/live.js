// The area live page: every site's flows and status now, the area's sums and provisional balance, from
// /api/v1/hub/areas/{area}/live/stream (server-sent events). Plain DOM; every value is inserted as text.
// A stale, offline or unknown site shows its status and the age of its last reading, never a number for
// its flows (the API gives null, and null is drawn as "stale" / "–", never as 0).
"use strict";

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
};
const kw = (w) => (w == null ? "–" : `${(w / 1000).toFixed(1)} kW`);
const kwh = (wh) => (wh == null ? "–" : `${(wh / 1000).toFixed(1)} kWh`);
const age = (s) => (s == null ? "never" : s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`);
const live = { area: null, source: null, last: null, ready: false };
window.giaLive = live;

function flowCell(site, w) {
  if (site.status !== "online") return el("td", { class: "flow stale" }, site.status);
  return el("td", { class: "flow" }, kw(w));
}

function render(doc) {
  live.last = doc;
  document.getElementById("updated").textContent = `updated ${new Date(doc.generated_at).toLocaleTimeString()}`;
  const c = doc.counts;
  document.getElementById("counts").textContent =
    `${c.online} online · ${c.stale} stale · ${c.offline} offline · ${c.unknown} never heard (stale after ${doc.stale_after_s} s)`;
  const f = doc.flows;
  document.querySelector("#area-flows tbody").replaceChildren(el("tr", {},
    el("td", {}, kw(f.grid_import_w)), el("td", {}, kw(f.grid_export_w)), el("td", {}, kw(f.generation_w)),
    el("td", {}, kw(f.storage_w)), el("td", {}, kw(f.consumption_w))));
  const out = f.left_out.consumption_w || [];
  document.getElementById("left-out").textContent = out.length ? `sums leave out ${out.length} site(s): ${out.join(", ")}` : "every site counted";
  document.querySelector("#area-balance tbody").replaceChildren(...[["today", doc.today], ["month", doc.month]].map(([n, b]) =>
    el("tr", {}, el("td", {}, `${n} ${b.label}`), el("td", {}, kwh(b.consumption_wh)), el("td", {}, kwh(b.generation_wh)),
      el("td", {}, kwh(b.grid_import_wh)), el("td", {}, kwh(b.grid_export_wh)), el("td", {}, b.quality))));
  const rows = doc.sites.map((s) => el("tr", { class: `site ${s.status}`, dataset: { site: s.site, status: s.status } },
    el("th", {}, s.site),
    el("td", { class: `status ${s.status}` }, s.status + (s.broker_status === "offline" ? " (last will)" : "")),
    el("td", {}, age(s.last_reading_age_s)),
    el("td", {}, s.lag_s == null ? "–" : `${s.lag_s.toFixed(1)} s`),
    flowCell(s, s.flows.grid_w), flowCell(s, s.flows.generation_w), flowCell(s, s.flows.storage_w),
    flowCell(s, s.flows.consumption_w),
    el("td", {}, s.last_report ? `${s.last_report.month} ${s.last_report.status}` : "none")));
  document.querySelector("#sites tbody").replaceChildren(...rows);
  live.ready = true;
}

function connect(area) {
  if (live.source) live.source.close();
  live.area = area;
  live.ready = false;
  const src = new EventSource(`/api/v1/hub/areas/${encodeURIComponent(area)}/live/stream`);
  src.addEventListener("area", (e) => render(JSON.parse(e.data)));
  src.addEventListener("unavailable", () => { document.getElementById("updated").textContent = "database unavailable"; });
  live.source = src;
}

async function main() {
  const r = await fetch("/api/v1/areas", { credentials: "same-origin" });
  const areas = (await r.json()).areas || [];
  const select = document.getElementById("area");
  select.replaceChildren(...areas.map((a) => el("option", { value: a.id }, a.name || a.id)));
  const wanted = new URLSearchParams(location.search).get("area");
  if (wanted && areas.some((a) => a.id === wanted)) select.value = wanted;
  select.addEventListener("change", () => connect(select.value));
  if (select.value) connect(select.value);
}
main();
