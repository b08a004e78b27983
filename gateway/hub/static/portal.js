// The certifier portal: one area's months x sites matrix (decision and grade per site, the area report and its
// criteria per month), a drill-down per cell with downloads, and what the hub refused. Plain DOM, no framework;
// every value is inserted as text (never as HTML).
"use strict";

const api = async (path) => {
  const r = await fetch(path, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
};

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

const badge = (text, cls) => el("span", { class: `badge ${cls}` }, text);
const mwh = (wh) => (wh == null ? "–" : `${(wh / 1e6).toFixed(3)} MWh`);
const state = { area: null, me: null };

function criteriaList(criteria) {
  const ul = el("ul", { class: "criteria" });
  for (const c of criteria || []) {
    const ok = c.met === true;
    ul.append(el("li", { class: ok ? "met" : "unmet", dataset: { criterion: `${c.name}:${c.basis ?? ""}` } },
      `${ok ? "✔" : "✘"} ${c.name}${c.basis ? ` (${c.basis})` : ""}: ${c.value ?? "n/a"} ${c.comparison ?? ""} ${c.threshold}`));
  }
  return ul;
}

function cellContent(cell) {
  if (!cell) return badge("no report", "missing");
  if (cell.status !== "accepted") return badge(cell.status, cell.status === "conflict" ? "conflict" : "rejected");
  const span = el("span", {}, badge(cell.grade ?? "?", cell.grade ?? "missing"));
  if (cell.refused) span.append(el("span", { class: "small" }, ` +${cell.refused} refused`));
  return span;
}

async function loadMatrix() {
  const m = await api(`/api/v1/areas/${state.area}/matrix`);
  const table = document.getElementById("matrix");
  const head = table.querySelector("thead");
  const body = table.querySelector("tbody");
  head.replaceChildren(el("tr", {}, el("th", {}, "month"), el("th", {}, "area report · criteria"),
    ...m.sites.map((s) => el("th", { scope: "col" }, s))));
  body.replaceChildren();
  for (const row of m.months) {
    const ar = row.area_report;
    const areaCell = el("td", { class: "cell area", tabindex: "0", dataset: { month: row.month, site: "" } });
    if (ar) {
      const notSummed = ar.missing.length;
      areaCell.append(badge(notSummed ? `v${ar.version}, ${notSummed} not summed` : `v${ar.version}, every site summed`,
        notSummed ? "provisional" : "verified"), criteriaList(ar.criteria));
    } else if (row.status) {
      areaCell.append(badge("awaited", "missing"),
        el("div", { class: "small" }, `waiting for ${row.status.awaited.join(", ") || "nobody"}; deadline ${row.status.deadline}`));
    } else {
      areaCell.append(badge("none", "missing"));
    }
    areaCell.addEventListener("click", () => showArea(row.month, ar));
    const tr = el("tr", { dataset: { month: row.month } }, el("th", { scope: "row" }, row.month), areaCell);
    for (const s of m.sites) {
      const td = el("td", { class: "cell", tabindex: "0", dataset: { month: row.month, site: s } }, cellContent(row.cells[s]));
      td.addEventListener("click", () => showSite(s, row.month));
      td.addEventListener("keydown", (e) => { if (e.key === "Enter") showSite(s, row.month); });
      tr.append(td);
    }
    body.append(tr);
  }
  for (const [year, y] of Object.entries(m.years || {})) {
    const td = el("td", { class: "cell area", colspan: String(1 + m.sites.length), dataset: { month: year, site: "" } },
      badge(`v${y.version}`, y.complete ? "verified" : "provisional"), criteriaList(y.criteria));
    td.addEventListener("click", () => showArea(year, y));
    body.append(el("tr", { class: "year" }, el("th", { scope: "row" }, `year ${year}`), td));
  }
}

function detail(title, ...nodes) {
  const d = document.getElementById("detail");
  d.hidden = false;
  document.getElementById("detail-title").textContent = title;
  document.getElementById("detail-body").replaceChildren(...nodes);
  d.scrollIntoView({ block: "nearest" });
}

function showArea(period, ar) {
  if (!ar) return detail(`Area ${state.area} ${period}`, el("p", {}, "no area report yet"));
  const links = el("p", { class: "links" },
    el("a", { class: "download-area-report", href: `/api/v1/areas/${state.area}/reports/${period}`, download: `${state.area}-${period}.json` }, "signed area report"),
    " · ",
    el("a", { class: "download-area-proof", href: `/api/v1/log/proof?area=${state.area}&period=${period}`, download: `${state.area}-${period}-proof.json` }, "inclusion proof"));
  const facts = el("ul", {},
    el("li", {}, `version ${ar.version}, log leaf ${ar.log_index}, sha256 `, el("span", { class: "small" }, ar.sha256)),
    el("li", {}, ar.missing && ar.missing.length ? `not summed: ${ar.missing.join(", ")}` : "every site summed"));
  if (ar.totals) facts.append(el("li", {}, `consumption ${mwh(ar.totals.consumption_wh)}, generation ${mwh(ar.totals.generation_wh)}, import ${mwh(ar.totals.grid_import_wh)}`));
  detail(`Area ${state.area} ${period}`, links, facts, criteriaList(ar.criteria));
}

async function showSite(site, month) {
  const d = await api(`/api/v1/areas/${state.area}/sites/${site}/months/${month}`);
  const list = el("ul", { class: "reports" });
  for (const r of d.reports) {
    const li = el("li", { dataset: { sha256: r.sha256 } },
      badge(r.status, r.status === "accepted" ? (r.grade ?? "verified") : "rejected"), ` ${r.grade ?? ""} — received ${r.received_at} via ${r.via}`,
      r.log_index != null ? `, log leaf ${r.log_index}` : "",
      r.reissue_of ? ` (reissue of ${r.reissue_of.slice(0, 12)}…)` : "",
      el("div", { class: "small" }, `sha256 ${r.sha256} · key ${r.key_id ?? "?"}`));
    if (r.reasons.length) li.append(el("ul", {}, ...r.reasons.slice(0, 8).map((x) => el("li", { class: "small" }, x))));
    const links = el("div", { class: "links" },
      el("a", { class: "download-report", href: `/api/v1/areas/${state.area}/sites/${site}/reports/${month}?sha256=${r.sha256}`, download: `${site}-${month}.json` }, "signed report"));
    if (r.status === "accepted") {
      links.append(" · ", el("a", { class: "download-proof", href: `/api/v1/log/proof?site=${site}&month=${month}`, download: `${site}-${month}-proof.json` }, "inclusion proof"));
    }
    if (r.evidence) {
      links.append(" · ", el("a", { class: "download-evidence", href: `/api/v1/areas/${state.area}/sites/${site}/evidence/${month}?sha256=${r.sha256}`, download: `${site}-${month}-evidence.zip` }, `evidence (${r.evidence.status})`));
    }
    li.append(links);
    list.append(li);
  }
  detail(`${site} · ${month}`, d.reports.length ? list : el("p", {}, "no report received"));
}

async function loadRefusals() {
  const r = await api(`/api/v1/areas/${state.area}/refusals`);
  const box = document.getElementById("refusals");
  const section = (title, rows, fmt) => el("div", { class: "refusal-group", dataset: { kind: title } },
    el("h3", {}, `${title} (${rows.length})`),
    rows.length ? el("ul", {}, ...rows.slice(0, 50).map((x) => el("li", {}, fmt(x)))) : el("p", { class: "small" }, "none"));
  box.replaceChildren(
    section("quarantined", r.quarantine, (q) => `${q.received_at} ${q.claimed_site} ${q.month ?? ""} ${q.kind}: ${q.reason}`),
    section("conflicts", r.conflicts, (c) => `${c.detected_at} ${c.site} ${c.month}: ${c.detail}`),
    section("rejected", r.rejected, (x) => `${x.received_at} ${x.site} ${x.month}: ${x.reasons.join("; ")}`),
    section("counted", r.incidents, (i) => `${i.last_at} ${i.site} ${i.month ?? ""} ${i.kind} ×${i.count}: ${i.detail}`));
}

async function selectArea(id, areas) {
  state.area = id;
  const a = areas.find((x) => x.id === id);
  const gens = (a.definition.shared_generators || []).map((g) => `${g.id} (${g.allocation}, at ${g.site})`).join(", ");
  document.getElementById("area-info").textContent =
    `${a.name || a.id} · policy ${a.policy.name} · shared generators: ${gens || "none"} · report deadline ${a.definition.deadline_days ?? "?"} days`;
  const keys = document.getElementById("area-keys");
  keys.href = `/api/v1/areas/${id}/keys`;
  keys.setAttribute("download", `${id}-keys.json`);
  document.getElementById("detail").hidden = true;
  await Promise.all([loadMatrix(), loadRefusals()]);
  window.giaPortal.ready = true;
}

async function main() {
  window.giaPortal = { ready: false };
  state.me = await api("/api/v1/me");
  document.getElementById("who").textContent = `${state.me.name} (${state.me.roles.join(", ")})`;
  // a viewer (anonymous on the hub's own machine, say) signs in with a certifier token to download
  document.getElementById("sign-in").hidden = state.me.roles.includes("certifier") || state.me.roles.includes("admin");
  const { areas } = await api("/api/v1/areas");
  const sel = document.getElementById("area");
  sel.replaceChildren(...areas.map((a) => el("option", { value: a.id }, a.name || a.id)));
  sel.addEventListener("change", () => selectArea(sel.value, areas));
  if (areas.length) await selectArea(areas[0].id, areas);
  else document.getElementById("area-info").textContent = "this token may read no area";
}

main().catch((e) => { document.getElementById("area-info").textContent = `error: ${e.message}`; });
