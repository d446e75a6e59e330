// citywatch open data: the citizens' page. Plain JS, no build step; data from the public API.
"use strict";

const API = "api/v1/";
const LAYERS = { air: { domain: "air", index: "vn_aqi_hourly", scale: "vn_aqi" },
                 water: { domain: "water", index: "vn_wqi", scale: "vn_wqi" } };
const T = {
  vi: { title: "Chất lượng môi trường Biên Hòa", other: "English", air: "Không khí (VN_AQI)", water: "Nước (VN_WQI)",
        map: "Bản đồ trạm quan trắc", list: "Các trạm", legendAir: "Mức chất lượng không khí và khuyến nghị sức khỏe",
        legendWater: "Mức chất lượng nước", updated: "Cập nhật", noData: "Chưa có số liệu", close: "Đóng",
        last24: "24 giờ qua", advisories: "Cảnh báo cho người dân", since: "từ", everyone: "Mọi người",
        sensitive: "Nhóm nhạy cảm", health: "Sức khỏe", use: "Mục đích sử dụng", readings: "Số đo gần nhất",
        dominant: "Chất ô nhiễm chính", ward: "Phường", max24: "Cao nhất 24 giờ", min24: "Thấp nhất 24 giờ",
        footer: "Dữ liệu mở, tự động, chưa kiểm định.", loadError: "Không tải được dữ liệu, thử lại sau.",
        station: "Trạm", value: "Giá trị", source: "Nguồn" },
  en: { title: "Biên Hòa environmental quality", other: "Tiếng Việt", air: "Air (VN_AQI)", water: "Water (VN_WQI)",
        map: "Map of monitoring stations", list: "Stations", legendAir: "Air quality categories and health advice",
        legendWater: "Water quality classes", updated: "Updated", noData: "No data yet", close: "Close",
        last24: "Last 24 hours", advisories: "Public advisories", since: "since", everyone: "Everyone",
        sensitive: "Sensitive groups", health: "Health", use: "Suitable use", readings: "Latest readings",
        dominant: "Dominant pollutant", ward: "Ward", max24: "24 h highest", min24: "24 h lowest",
        footer: "Open data, automatic, not yet validated.", loadError: "Could not load the data; try again later.",
        station: "Station", value: "Value", source: "Source" },
};
const GREY = { colour: "#d0d4d8", text_colour: "#000000" };

const state = { lang: initialLang(), layer: "air", scales: null, current: null, advisories: [], selected: null };
const $ = (id) => document.getElementById(id);
const t = (k) => T[state.lang][k];
const label = (o) => (o ? o["label_" + state.lang] : "");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const SVGNS = "http://www.w3.org/2000/svg";

function initialLang() {
  const q = new URLSearchParams(location.search).get("lang");
  if (q === "vi" || q === "en") return q;
  try { const s = localStorage.getItem("citywatch-lang"); if (s === "vi" || s === "en") return s; } catch (e) { /* private mode */ }
  return "vi";
}

async function getJSON(path) {
  const r = await fetch(API + path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function scaleOf(layer) { return state.scales[LAYERS[layer].scale]; }
function categoryOf(layer, number) {
  return scaleOf(layer).categories.find((c) => c.number === number) || null;
}
function indexOf(st, layer) { return st.indices[LAYERS[layer].index] || null; }
function fmt(v) { return v == null ? "–" : (Math.abs(v) >= 100 ? Math.round(v) : Math.round(v * 10) / 10).toLocaleString(state.lang === "vi" ? "vi-VN" : "en-GB"); }

function metricName(m) { const n = state.scales.metrics[m]; return n ? n[state.lang] : m; }
function reading(r) {
  const unit = state.scales.units[r.unit] ?? r.unit;
  return esc(`${fmt(r.unit === "1" ? r.value * 100 : r.value)} ${unit}`);
}
const INDEX_SCALE = { vn_aqi_hourly: "vn_aqi", vn_aqi_daily: "vn_aqi", vn_wqi: "vn_wqi", fire_danger: "fire_danger" };
function indexName(name) {
  const sc = state.scales[INDEX_SCALE[name]];
  return sc ? sc["name_" + state.lang] : name;
}

function badge(cat, text, extra = "") {
  const c = cat || GREY;
  return `<span class="badge ${extra}" style="background:${c.colour};color:${c.text_colour}">${esc(text)}</span>`;
}

function stationsOfLayer() {
  return state.current.stations.filter((s) => s.domain === LAYERS[state.layer].domain);
}

function renderTexts() {
  document.documentElement.lang = state.lang;
  document.title = t("title");
  $("title").textContent = t("title");
  $("lang").textContent = t("other");
  $("lang").lang = state.lang === "vi" ? "en" : "vi";
  for (const b of document.querySelectorAll("#layers button")) {
    b.textContent = t(b.dataset.layer);
    b.setAttribute("aria-pressed", String(b.dataset.layer === state.layer));
  }
  $("map-title").textContent = t("map") + " · " + t(state.layer);
  $("list-title").textContent = t("list");
  $("legend-title").textContent = state.layer === "air" ? t("legendAir") : t("legendWater");
  $("footer-text").textContent = t("footer");
}

function renderMap() {
  const svg = $("map");
  const all = stationsOfLayer();
  if (!all.length) { svg.innerHTML = ""; return; }
  const lats = all.map((s) => s.lat), lons = all.map((s) => s.lon);
  const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);  // equirectangular, true shape near the city
  const w = Math.max((maxLon - minLon) * k, 1e-6), h = Math.max(maxLat - minLat, 1e-6);
  const W = 1000, pad = 60, R = 40, scale = (W - 2 * pad) / w, H = Math.round(h * scale + 2 * pad);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("aria-label", t("map") + " · " + t(state.layer));
  const x = (lon) => pad + (lon - minLon) * k * scale, y = (lat) => pad + (maxLat - lat) * scale;
  const parts = [];
  const areas = {};
  for (const s of all) (areas[s.area] = areas[s.area] || []).push(s);
  for (const [area, ss] of Object.entries(areas)) {
    const ax = ss.reduce((a, s) => a + x(s.lon), 0) / ss.length, ay = ss.reduce((a, s) => a + y(s.lat), 0) / ss.length;
    parts.push(`<text class="area" x="${ax.toFixed(1)}" y="${(ay + 38).toFixed(1)}" text-anchor="middle" aria-hidden="true">${esc(area)}</text>`);
  }
  const placed = spread(stationsOfLayer().map((s) => ({ s, x0: x(s.lon), y0: y(s.lat) })), R + 3, W, H);
  for (const { s, x0, y0, px, py } of placed) {
    const ix = indexOf(s, state.layer), cat = ix ? categoryOf(state.layer, ix.category) : null, c = cat || GREY;
    const cx = px.toFixed(1), cy = py.toFixed(1), value = ix ? fmt(ix.value) : "–";
    const name = `${s.name} (${s.area}): ${ix ? value + " " + label(cat) : t("noData")}`;
    if (Math.hypot(px - x0, py - y0) > 2) {  // moved apart from a neighbour: a leader to the true place
      parts.push(`<line x1="${x0.toFixed(1)}" y1="${y0.toFixed(1)}" x2="${cx}" y2="${cy}" stroke="#555" stroke-width="2" aria-hidden="true"/>` +
        `<circle cx="${x0.toFixed(1)}" cy="${y0.toFixed(1)}" r="4" fill="#333" aria-hidden="true"/>`);
    }
    const shape = state.layer === "air"
      ? `<circle class="shape" cx="${cx}" cy="${cy}" r="${R}" fill="${c.colour}" stroke="#222" stroke-width="2"/>`
      : `<rect class="shape" x="${(px - R).toFixed(1)}" y="${(py - R).toFixed(1)}" width="${2 * R}" height="${2 * R}" rx="8" fill="${c.colour}" stroke="#222" stroke-width="2"/>`;
    parts.push(`<g class="marker${state.selected === s.id ? " selected" : ""}" data-sensor="${esc(s.id)}" data-category="${ix ? ix.category : ""}" ` +
      `tabindex="0" role="button" aria-label="${esc(name)}"><title>${esc(name)}</title>${shape}` +
      `<text x="${cx}" y="${cy}" dy="0.35em" text-anchor="middle" fill="${c.text_colour}">${esc(value)}</text></g>`);
  }
  svg.innerHTML = parts.join("");
  $("updated").textContent = `${t("updated")}: ${new Date(state.current.generated_at).toLocaleString(state.lang === "vi" ? "vi-VN" : "en-GB")}`;
}

// Pushes overlapping markers apart (a few rounds of pairwise repulsion), inside the frame.
function spread(items, radius, W, H) {
  for (const it of items) { it.px = it.x0; it.py = it.y0; }
  for (let round = 0; round < 80; round++) {
    let moved = false;
    for (let i = 0; i < items.length; i++) {
      for (let j = i + 1; j < items.length; j++) {
        const a = items[i], b = items[j];
        let dx = b.px - a.px, dy = b.py - a.py, d = Math.hypot(dx, dy);
        if (d >= 2 * radius) continue;
        if (d < 1e-6) { dx = Math.cos(i + j); dy = Math.sin(i + j); d = 1; }
        const push = (2 * radius - d) / 2 + 0.5;
        a.px -= dx / d * push; a.py -= dy / d * push; b.px += dx / d * push; b.py += dy / d * push;
        moved = true;
      }
    }
    for (const it of items) {
      it.px = Math.min(W - radius, Math.max(radius, it.px)); it.py = Math.min(H - radius, Math.max(radius, it.py));
    }
    if (!moved) break;
  }
  return items;
}

function renderList() {
  const items = stationsOfLayer().map((s) => {
    const ix = indexOf(s, state.layer), cat = ix ? categoryOf(state.layer, ix.category) : null;
    return { s, ix, cat, order: ix ? -ix.category : 1 };
  });
  items.sort((a, b) => a.order - b.order || a.s.name.localeCompare(b.s.name));
  $("stations").innerHTML = items.map(({ s, ix, cat }) =>
    `<li><button type="button" data-station="${esc(s.id)}">${badge(cat, ix ? fmt(ix.value) : "–")}` +
    `<span class="who">${esc(s.name)}<small>${esc(s.area)} · ${esc(s.id)}</small></span>` +
    `<span class="label" data-category-label="${ix ? ix.category : ""}">${esc(ix ? label(cat) : t("noData"))}</span></button></li>`).join("");
}

function renderLegend() {
  const sc = scaleOf(state.layer);
  $("legend").innerHTML = sc.categories.map((c) => {
    const range = `${c.low}–${c.high}`;
    const text = state.layer === "air"
      ? `<p><strong>${esc(label(c))}</strong>: ${esc(c["health_" + state.lang])}</p>` +
        `<p>${esc(t("everyone"))}: ${esc(c["advice_" + state.lang])}</p><p>${esc(t("sensitive"))}: ${esc(c["sensitive_" + state.lang])}</p>`
      : `<p><strong>${esc(label(c))}</strong>: ${esc(c["use_" + state.lang])}</p>`;
    return `<li data-legend="${c.number}">${badge(c, range)}<div>${text}</div></li>`;
  }).join("");
  $("legend-source").textContent = `${t("source")}: ${sc.source || ""}`;
}

function renderAdvisories() {
  const box = $("advisories");
  const list = state.advisories;
  if (!list.length) { box.hidden = true; box.innerHTML = ""; return; }
  box.hidden = false;
  box.innerHTML = `<h2>${esc(t("advisories"))}</h2><ul>` + list.map((a) => {
    const cur = a.current;
    const what = cur ? `${fmt(cur.value)} ${label(cur)}` : a.level;
    return `<li data-advisory="${esc(a.sensor)}"><strong>${esc(a.name)}</strong> (${esc(a.area)}): ${esc(indexName(a.index))} ${esc(what)} · ` +
      `${esc(t("since"))} ${esc(new Date(a.since).toLocaleString(state.lang === "vi" ? "vi-VN" : "en-GB"))}</li>`;
  }).join("") + "</ul>";
}

function renderAll() {
  renderTexts();
  if (!state.current) return;
  renderMap(); renderList(); renderLegend(); renderAdvisories();
  if (state.selected) renderStation(state.selected, false);
}

async function renderStation(id, load = true) {
  const s = state.current.stations.find((x) => x.id === id);
  if (!s) return;
  state.selected = id;
  const layer = s.domain === "water" ? "water" : "air";
  const ix = s.indices[LAYERS[layer].index] || null, cat = ix ? categoryOf(layer, ix.category) : null;
  const box = $("station");
  let advice = "";
  if (cat && layer === "air") {
    advice = `<p><strong>${esc(t("health"))}:</strong> ${esc(cat["health_" + state.lang])}</p>` +
      `<p><strong>${esc(t("everyone"))}:</strong> ${esc(cat["advice_" + state.lang])}</p>` +
      `<p><strong>${esc(t("sensitive"))}:</strong> ${esc(cat["sensitive_" + state.lang])}</p>`;
  } else if (cat) {
    advice = `<p><strong>${esc(t("use"))}:</strong> ${esc(cat["use_" + state.lang])}</p>`;
  }
  const rows = Object.entries(s.readings).map(([m, r]) => `<tr><th scope="row">${esc(metricName(m))}</th><td>${reading(r)}</td></tr>`).join("");
  box.innerHTML = `<button type="button" class="close" aria-label="${esc(t("close"))}">×</button>` +
    `<h2>${esc(s.name)}</h2><p class="muted">${esc(t("ward"))} ${esc(s.area)} · ${esc(s.id)}</p>` +
    `<div class="head">${badge(cat, ix ? fmt(ix.value) : "–", "big")}<strong id="station-label">${esc(ix ? label(cat) : t("noData"))}</strong>` +
    (ix && ix.dominant ? `<span class="muted">${esc(t("dominant"))}: ${esc(metricName(ix.dominant))}</span>` : "") + `</div>` + advice +
    `<h3>${esc(t("last24"))}</h3><div id="chart-box"><svg id="chart" viewBox="0 0 340 170" role="img"></svg><p id="chart-summary" class="muted"></p></div>` +
    (rows ? `<h3>${esc(t("readings"))}</h3><table>${rows}</table>` : "");
  box.hidden = false;
  box.querySelector(".close").addEventListener("click", () => { state.selected = null; box.hidden = true; renderMap(); });
  for (const g of document.querySelectorAll("#map .marker")) g.classList.toggle("selected", g.dataset.sensor === id);
  if (load) { box.focus({ preventScroll: true }); box.scrollIntoView({ block: "start" }); }
  try {
    const hist = await getJSON(`sensors/${encodeURIComponent(id)}/history?hours=24&metric=${encodeURIComponent(Object.keys(s.readings)[0] || "")}`.replace(/&metric=$/, ""));
    drawChart(hist, layer);
  } catch (e) {
    $("chart-summary").textContent = t("loadError");
  }
}

function drawChart(hist, layer) {
  const name = LAYERS[layer].index, svg = $("chart");
  if (!svg) return;
  const pts = hist.rows.filter((r) => r[name] != null).map((r) => ({ t: Date.parse(r.time), v: r[name], c: r[name + "_category"] }));
  const W = 340, H = 170, L = 30, R = 8, TOP = 8, B = 22;
  const t1 = Date.parse(hist.end), t0 = Date.parse(hist.start);
  const cats = scaleOf(layer).categories;
  const vmax = Math.max(layer === "air" ? 100 : 100, ...pts.map((p) => p.v)) * 1.05;
  const x = (ts) => L + (ts - t0) / (t1 - t0) * (W - L - R), y = (v) => TOP + (1 - v / vmax) * (H - TOP - B);
  const parts = [];
  for (const c of cats) {  // category bands behind the line
    const lo = Math.min(c.low, vmax), hi = Math.min(c.high + (layer === "air" ? 1 : 0), vmax);
    if (lo >= vmax) continue;
    parts.push(`<rect x="${L}" y="${y(hi).toFixed(1)}" width="${W - L - R}" height="${(y(lo) - y(hi)).toFixed(1)}" fill="${c.colour}" opacity="0.25"/>`);
  }
  for (let v = 0; v <= vmax; v += vmax > 250 ? 100 : 50) parts.push(`<text x="${L - 4}" y="${y(v) + 4}" text-anchor="end">${v}</text>`);
  for (let h = 0; h <= 24; h += 6) {
    const ts = t1 - (24 - h) * 3600e3, d = new Date(ts);
    parts.push(`<text x="${x(ts)}" y="${H - 6}" text-anchor="${h === 24 ? "end" : h === 0 ? "start" : "middle"}">${String(d.getHours()).padStart(2, "0")}:00</text>`);
  }
  if (pts.length) {
    parts.push(`<polyline fill="none" stroke="#222" stroke-width="2" points="${pts.map((p) => `${x(p.t + 1800e3).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ")}"/>`);
    for (const p of pts) {
      const c = cats.find((k) => k.number === p.c) || GREY;
      parts.push(`<circle class="pt" cx="${x(p.t + 1800e3).toFixed(1)}" cy="${y(p.v).toFixed(1)}" r="4" fill="${c.colour}" stroke="#222"/>`);
    }
  }
  svg.innerHTML = parts.join("");
  const vals = pts.map((p) => p.v);
  const summary = vals.length
    ? `${indexName(name)}: ${t("max24")} ${fmt(Math.max(...vals))}, ${t("min24")} ${fmt(Math.min(...vals))} (${vals.length} h)`
    : t("noData");
  svg.setAttribute("aria-label", `${t("last24")}: ${summary}`);
  $("chart-summary").textContent = summary;
}

async function load() {
  try {
    const [scales, current, adv] = await Promise.all([
      state.scales ? Promise.resolve(state.scales) : getJSON("scales"), getJSON("current"), getJSON("advisories")]);
    Object.assign(state, { scales, current, advisories: adv.advisories });
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("updated").textContent = t("loadError");
  }
  renderAll();
}

function onPick(e) {
  const el = e.target.closest("[data-sensor],[data-station]");
  if (el) renderStation(el.dataset.sensor || el.dataset.station);
}

document.addEventListener("DOMContentLoaded", () => {
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "vi" ? "en" : "vi";
    try { localStorage.setItem("citywatch-lang", state.lang); } catch (e) { /* private mode */ }
    renderAll();
  });
  $("layers").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-layer]");
    if (b) { state.layer = b.dataset.layer; renderAll(); }
  });
  $("map").addEventListener("click", onPick);
  $("map").addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onPick(e); } });
  $("stations").addEventListener("click", onPick);
  renderTexts();
  load();
  setInterval(load, 60000);
});
