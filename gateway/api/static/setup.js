"use strict";
// Device setup (admin): scan -> identify the map -> test-read -> pick channel roles -> check -> save.
// The server runs the same checks as `gia check-config` and keeps a backup of the previous file.
(() => {
  const G = window.GIA;
  const { T, esc } = G;
  const $ = (id) => document.getElementById(id);
  const ROLES = ["grid_import", "grid_export", "generation", "consumption", "storage_charge", "storage_discharge", "auxiliary"];
  const ROLE_TEXT = {
    grid_import: T("grid import"), grid_export: T("grid export"), generation: T("generation"), consumption: T("consumption"),
    storage_charge: T("battery charge"), storage_discharge: T("battery discharge"), auxiliary: T("auxiliary"),
  };
  let maps = [];
  const mapOf = (name) => maps.find((m) => m.name === name);

  async function loadMaps() {
    const { status, body } = await G.getJSON("/api/v1/setup/maps");
    if (status !== 200) return;
    maps = body.maps;
    $("dev-map").innerHTML = maps.map((m) => `<option value="${esc(m.name)}">${esc(m.name)} — ${esc(m.product)}</option>`).join("");
    renderChannels();
  }
  function renderChannels() {
    const m = mapOf($("dev-map").value);
    const regs = m ? m.quantities.filter((q) => /^energy_.*_wh$/.test(q)) : [];
    $("channels").innerHTML = regs.length ? regs.map((q) => `<div class="row channel" data-q="${esc(q)}">
      <label>${esc(q)}<select class="role"><option value="">${esc(T("not used"))}</option>${ROLES.map((r) => `<option value="${r}">${esc(ROLE_TEXT[r])}</option>`).join("")}</select></label>
      <label>${esc(T("source"))}<select class="source"><option value="">—</option><option value="pv">PV</option><option value="wind">${esc(T("wind"))}</option><option value="chp">CHP</option><option value="other">${esc(T("other"))}</option></select></label>
      <label>${esc(T("renewable"))}<select class="renewable"><option value="">—</option><option value="true">${esc(T("yes"))}</option><option value="false">${esc(T("no"))}</option></select></label>
    </div>`).join("") : `<p class="muted">${esc(T("This map has no energy registers: the device is shown live but not in the balance."))}</p>`;
    $("save-btn").disabled = true;
  }
  function device() {
    const channels = [];
    for (const row of document.querySelectorAll(".channel")) {
      const role = row.querySelector(".role").value;
      if (!role) continue;
      const ch = { role, quantity: row.dataset.q };
      const src = row.querySelector(".source").value, ren = row.querySelector(".renewable").value;
      if (role === "generation") { if (src) ch.source = src; if (ren) ch.renewable = ren === "true"; }
      channels.push(ch);
    }
    return {
      id: $("dev-id").value.trim(), driver: "modbus", connection: $("dev-url").value.trim(),
      unit_id: Number($("dev-unit").value), map: $("dev-map").value, poll_interval_s: Number($("dev-poll").value), channels,
    };
  }

  $("scan-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("scan-status").textContent = T("scanning…");
    $("scan-btn").disabled = true;
    const { status, body } = await G.postJSON("/api/v1/setup/scan", { url: $("scan-url").value.trim(), units: $("scan-units").value });
    $("scan-btn").disabled = false;
    if (status !== 200) { $("scan-status").innerHTML = `<span class="error">${esc(body ? body.detail : status)}</span>`; return; }
    const units = body.units;
    $("scan-status").textContent = units.length ? T("{n} unit(s) answered", { n: units.length })
      : body.connected ? T("connected, but no unit answered: check the unit ids, baud rate and parity") : T("cannot connect: check the address, port, cable and power");
    $("scan-result").innerHTML = units.length ? `<thead><tr><th>${esc(T("Unit id"))}</th><th>${esc(T("Product"))}</th><th>${esc(T("Device map"))}</th><th></th></tr></thead><tbody>` +
      units.map((u, k) => `<tr><td>${u.unit}</td><td>${esc(u.product || "—")}</td><td>${esc(u.maps.join(", ") || (u.sunspec_models.length ? "SunSpec" : T("none")))}${u.plausible ? ` <span class="q-mark">${esc(T("probably"))}</span>` : ""}</td><td><button class="secondary" type="button" data-k="${k}">${esc(T("Use"))}</button></td></tr>`).join("") + "</tbody>" : "";
    for (const b of $("scan-result").querySelectorAll("button")) b.addEventListener("click", () => {
      const u = units[Number(b.dataset.k)];
      $("dev-url").value = body.url; $("dev-unit").value = u.unit;
      if (u.maps[0]) { $("dev-map").value = u.maps[0]; renderChannels(); }
      if (!$("dev-id").value) $("dev-id").value = `${(u.maps[0] || "device").split("-")[0]}-${u.unit}`;
      $("device-form").scrollIntoView({ behavior: "smooth" });
    });
  });
  $("dev-map").addEventListener("change", renderChannels);
  $("read-btn").addEventListener("click", async () => {
    $("read-status").textContent = T("reading…");
    const { status, body } = await G.postJSON("/api/v1/setup/read", { url: $("dev-url").value.trim(), unit: Number($("dev-unit").value), map: $("dev-map").value });
    if (status !== 200) { $("read-status").innerHTML = `<span class="error">${esc(body ? body.detail : status)}</span>`; $("read-result").innerHTML = ""; return; }
    $("read-status").textContent = T("{n} values read", { n: body.samples.length });
    $("read-result").innerHTML = `<thead><tr><th>${esc(T("Quantity"))}</th><th class="n">${esc(T("Value"))}</th><th>${esc(T("quality"))}</th></tr></thead><tbody>` +
      body.samples.map((s) => `<tr><td>${esc(s.quantity)}</td><td class="n">${s.value === null ? "—" : esc(typeof s.value === "number" ? G.nf(s.value, Number.isInteger(s.value) ? 0 : 2) : s.value)} ${esc(s.unit)}</td><td>${esc(s.quality)}</td></tr>`).join("") + "</tbody>";
  });
  document.querySelector("#channels").addEventListener("change", () => { $("save-btn").disabled = true; });
  $("check-btn").addEventListener("click", async () => {
    const { status, body } = await G.postJSON("/api/v1/setup/check", { device: device() });
    const out = $("check-result");
    if (status !== 200) { out.innerHTML = `<p class="error">${esc(body ? body.detail : status)}</p>`; return; }
    if (body.ok) { out.innerHTML = `<p class="ok">${esc(T("The configuration with this device passes every check."))}</p>`; $("save-btn").disabled = false; }
    else { out.innerHTML = `<ul class="error">${body.problems.map((p) => `<li>${esc(p.path)}: ${esc(p.message)}${p.fix ? " — " + esc(p.fix) : ""}</li>`).join("")}</ul>`; $("save-btn").disabled = true; }
  });
  $("save-btn").addEventListener("click", async () => {
    const { status, body } = await G.postJSON("/api/v1/setup/save", { device: device() });
    const out = $("check-result");
    if (status !== 200) { out.innerHTML = `<p class="error">${esc(body ? body.detail : status)}</p>`; return; }
    out.innerHTML = `<p class="ok">${esc(T("Saved. The previous configuration was kept as {backup}. Restart the agent to start polling the device.", { backup: body.backup }))}</p>`;
    $("save-btn").disabled = true;
  });
  G.header("setup");
  loadMaps();
})();
