"use strict";
// What every page shares: the boot block the server rendered (language, translations, who is signed in,
// the site's time zone), translation, number and time formats, and the header (navigation, language
// switch, sign-out). One time convention everywhere: the site's time zone, named once in the header.
window.GIA = (() => {
  const bootEl = document.getElementById("gia-boot");
  const boot = bootEl ? JSON.parse(bootEl.textContent) : { lang: "en", messages: {}, site: { timezone: "UTC" }, user: null, languages: {} };
  const M = boot.messages || {};
  const lang = boot.lang || "en";
  const tz = (boot.site && boot.site.timezone) || "UTC";
  // T("{n} devices", {n: 3}): the catalogue's translation (gateway/i18n/lv.po), fields filled in
  const T = (s, vals) => {
    let t = M[s] || s;
    if (vals) t = t.replace(/\{(\w+)\}/g, (m, k) => (k in vals ? String(vals[k]) : m));
    return t;
  };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const nfCache = {};
  const nf = (v, d) => (nfCache[d] = nfCache[d] || new Intl.NumberFormat(lang, { minimumFractionDigits: d, maximumFractionDigits: d })).format(v);
  const unknown = (v) => v === null || v === undefined || Number.isNaN(v);
  function fmtPower(w) {
    if (unknown(w)) return "—";
    if (Math.abs(w) < 0.5) w = 0; // never "-0 W"
    const a = Math.abs(w);
    if (a >= 1e6) return nf(w / 1e6, 2) + " MW";
    if (a >= 1e3) return nf(w / 1e3, a >= 1e5 ? 0 : 1) + " kW";
    return nf(w, 0) + " W";
  }
  function fmtEnergy(wh) {
    if (unknown(wh)) return "—";
    const a = Math.abs(wh);
    if (a >= 1e6) return nf(wh / 1e6, a >= 1e8 ? 0 : 2) + " MWh";
    if (a >= 1e3) return nf(wh / 1e3, a >= 1e5 ? 0 : 1) + " kWh";
    return nf(wh, 0) + " Wh";
  }
  const pct = (x) => (unknown(x) ? "—" : nf(100 * x, 0) + " %");
  const dtf = {};
  const fmt = (key, opts) => (dtf[key] = dtf[key] || new Intl.DateTimeFormat(lang, { timeZone: tz, ...opts }));
  const time = (d) => fmt("t", { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(new Date(d));
  const timeS = (d) => fmt("ts", { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" }).format(new Date(d));
  const dateTime = (d) => fmt("dt", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(new Date(d));
  const day = (d) => fmt("d", { weekday: "short", day: "numeric", month: "short" }).format(new Date(d));
  const monthName = (d) => fmt("m", { month: "long", year: "numeric" }).format(new Date(d));
  // hour of day in the site's zone, for chart axes
  const hourOf = (d) => Number(fmt("h", { hour: "numeric", hourCycle: "h23" }).format(new Date(d)));
  // ISO timestamps inside server messages ("readings start at 2026-12-01T06:00:00Z") in the site's time
  const localiseTimes = (text) => String(text).replace(/\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?Z/g, (iso) => dateTime(iso));

  async function getJSON(url, opts) {
    let r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, ...(opts || {}) });
    // 429: this browser has its share of history/report requests in flight (http.expensive_per_client);
    // wait as the gateway asks and try again a few times instead of showing an error.
    for (let i = 0; r.status === 429 && i < 5; i++) {
      const wait = Math.min(10, Number(r.headers.get("Retry-After")) || 1);
      await new Promise((ok) => setTimeout(ok, wait * 1000));
      r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, ...(opts || {}) });
    }
    let body = null;
    try { body = await r.json(); } catch { body = null; }
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    return { status: r.status, body };
  }
  const postJSON = (url, data) => getJSON(url, { method: "POST", body: JSON.stringify(data), headers: { Accept: "application/json", "Content-Type": "application/json" } });

  function header(active) {
    const user = boot.user;
    const nav = document.getElementById("nav");
    if (nav) {
      for (const a of nav.querySelectorAll("a")) {
        if (a.dataset.nav === active) a.setAttribute("aria-current", "page");
        if (a.hasAttribute("data-admin")) a.hidden = !(user && user.admin);
      }
    }
    const sw = document.getElementById("lang-switch");
    if (sw) {
      const here = location.pathname + location.search;
      sw.innerHTML = Object.entries(boot.languages || {}).map(([code, name]) => code === lang
        ? `<span aria-current="true" title="${esc(name)}">${esc(code.toUpperCase())}</span>`
        : `<a href="/lang/${code}?next=${encodeURIComponent(here)}" hreflang="${code}" lang="${code}" title="${esc(name)}">${esc(code.toUpperCase())}</a>`).join("");
    }
    const who = document.getElementById("who");
    if (who) {
      if (user && user.name !== "anonymous-loopback") {
        who.hidden = false;
        who.querySelector(".name").textContent = user.name;
      } else if (user) {
        who.hidden = false;
        who.querySelector(".name").textContent = T("local viewer");
        const b = who.querySelector("button");
        if (b) { b.textContent = T("Sign in"); b.closest("form").action = "/login"; b.closest("form").method = "get"; }
      }
    }
    const tzEl = document.getElementById("tz");
    if (tzEl) tzEl.textContent = T("times in {tz}", { tz });
    const name = document.getElementById("site-name");
    if (name && boot.site) name.textContent = boot.site.name ? `${boot.site.name} · ${boot.site.id}` : T("site {id}", { id: boot.site.id });
  }

  return { boot, lang, tz, T, esc, nf, fmtPower, fmtEnergy, pct, time, timeS, dateTime, day, monthName, hourOf, localiseTimes, getJSON, postJSON, header, unknown };
})();
