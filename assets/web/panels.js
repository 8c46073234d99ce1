// The three views of the page — federation, memory, operations — each keeping
// what it derives from its channel's messages and drawing it with ECharts.
// Text from the data is only ever set with textContent (never as HTML).

import { Series, SeriesSet, SyncLog } from "./series.js";

const COLORS = {
  text: "#d8dee6",
  muted: "#8593a3",
  line: "#2a3441",
  live: "#3fb950",
  blue: "#58a6ff",
  stale: "#f0883e",
  bad: "#f85149",
  warn: "#d29922",
  purple: "#bc8cff",
};
const STATUS_COLOR = { online: COLORS.live, degraded: COLORS.warn, offline: COLORS.bad };
const TIER_RING = { core: 1, trusted: 2, verified: 3 };
const TIER_SIZE = { core: 34, trusted: 26, verified: 20 };
const SYNC_BUCKET_MS = 15000;
const LINK_WINDOW_MS = 5 * 60 * 1000;

const $ = (id) => document.getElementById(id);

function text(id, value) {
  const el = $(id);
  if (el) el.textContent = value;
  return el;
}

function setValue(id, shown, raw) {
  const el = text(id, shown);
  if (el) el.dataset.value = raw === undefined || raw === null ? "" : String(raw);
}

function fmt(x, digits = 1) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–";
}

function ago(ms) {
  if (!Number.isFinite(ms)) return "–";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (typeof c === "object" && c !== null) {
      td.textContent = c.text;
      if (c.className) td.className = c.className;
      if (c.title) td.title = c.title;
    } else {
      td.textContent = c;
    }
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
}

function replaceRows(tableId, rows) {
  const tbody = $(tableId).querySelector("tbody");
  tbody.replaceChildren();
  for (const r of rows) row(tbody, r);
}

/**
 * An ECharts instance on a container, with the page's common options.
 *
 * ECharts lays a chart out in its container's box, and a graph series throws
 * inside ECharts when that box is empty (a tiny or minimised window, a hidden
 * section). So a chart is drawn only while its container has an area: an
 * option set meanwhile is kept (the latest; each one is a chart's whole
 * option) and drawn, like every size change, when a ResizeObserver sees the
 * container with an area again.
 */
class Chart {
  constructor(id) {
    this.el = $(id);
    this.chart = window.echarts.init(this.el, null, { renderer: "canvas" });
    this.pending = null;
    this.framed = false;
    new ResizeObserver(() => this.refit()).observe(this.el);
  }

  hasArea() {
    return this.el.clientWidth > 0 && this.el.clientHeight > 0;
  }

  /** Sets the chart's whole option; `points` (shown as `data-points`) counts its data. */
  set(option, points) {
    this.el.dataset.points = String(points);
    const whole = {
      backgroundColor: "transparent",
      animation: false,
      textStyle: { color: COLORS.text },
      ...option,
    };
    if (this.hasArea()) this.draw(whole, points);
    else this.pending = { option: whole, points };
  }

  /**
   * Draws in the container's current box (ECharts keeps the size it last
   * measured); `data-drawn` counts the data on screen.
   */
  draw(option, points) {
    if (this.chart.getWidth() !== this.el.clientWidth || this.chart.getHeight() !== this.el.clientHeight) this.chart.resize();
    this.chart.setOption(option, { notMerge: false, lazyUpdate: false });
    this.el.dataset.drawn = String(points);
  }

  /** Follows the container's size, in the next frame (outside the observer's callback). */
  refit() {
    if (this.framed) return;
    this.framed = true;
    requestAnimationFrame(() => {
      this.framed = false;
      if (!this.hasArea()) return;
      if (this.pending) {
        const { option, points } = this.pending;
        this.pending = null;
        this.draw(option, points);
      } else {
        this.chart.resize();
      }
    });
  }
}

function timeAxis() {
  return {
    type: "time",
    axisLine: { lineStyle: { color: COLORS.line } },
    axisLabel: { color: COLORS.muted, hideOverlap: true },
    splitLine: { show: false },
  };
}

function valueAxis(name, extra = {}) {
  return {
    type: "value",
    name,
    nameTextStyle: { color: COLORS.muted },
    axisLabel: { color: COLORS.muted },
    splitLine: { lineStyle: { color: COLORS.line } },
    scale: true,
    ...extra,
  };
}

const TOOLTIP = { trigger: "axis", renderMode: "richText", confine: true };
const GRID = { left: 52, right: 52, top: 34, bottom: 26 };
const LEGEND = { top: 0, textStyle: { color: COLORS.muted }, itemHeight: 8 };

/**
 * Marks the panels and KPIs of a section with its provenance and lists every
 * section's provenance in the section header.
 */
function showSources(rootId, sources) {
  const root = $(rootId);
  const list = $(`${rootId}-sources`);
  list.replaceChildren();
  const entries = Object.entries(sources || {}).sort(([a], [b]) => a.localeCompare(b));
  for (const [name, p] of entries) {
    const badge = document.createElement("span");
    badge.className = "source";
    badge.dataset.section = name;
    badge.dataset.source = p.source;
    let label = `${name}: ${p.source}`;
    if (p.source === "stale") label += typeof p.age_seconds === "number" ? ` (${Math.round(p.age_seconds)} s old)` : " (no data yet)";
    badge.textContent = label;
    if (p.error) badge.title = p.error;
    list.appendChild(badge);
  }
  for (const el of root.querySelectorAll("[data-section]")) {
    if (el.classList.contains("source")) continue;
    const names = el.dataset.section.split(" ");
    const known = names.map((n) => [n, sources && sources[n]]).filter(([, p]) => p);
    const stale = known.filter(([, p]) => p.source === "stale");
    const simulated = known.filter(([, p]) => p.source === "simulated");
    const source = stale.length ? "stale" : simulated.length ? "simulated" : known.length ? "live" : "";
    el.dataset.stale = String(stale.length > 0);
    el.dataset.source = source;
    const badge = el.querySelector(":scope > h3 > .badge");
    if (badge) {
      badge.dataset.source = source;
      badge.textContent = source;
      badge.title = stale.map(([n, p]) => `${n}: ${p.error || "stale"}`).join("\n");
    }
    let note = el.querySelector(":scope > .stale-note");
    if (stale.length && el.classList.contains("panel")) {
      if (!note) {
        note = document.createElement("p");
        note.className = "stale-note";
        el.insertBefore(note, el.children[1] || null);
      }
      note.textContent = stale
        .map(([n, p]) => `${n} is stale${typeof p.age_seconds === "number" ? `, last good values ${Math.round(p.age_seconds)} s old` : ", no data yet"}: ${p.error || "source failed"}`)
        .join(" · ");
    } else if (note) {
      note.remove();
    }
  }
}

export class FederationView {
  constructor() {
    this.latest = null;
    this.health = new SeriesSet(["health", "integrity", "latency"]);
    this.sync = new SyncLog();
    this.mesh = new Chart("chart-mesh");
    this.healthChart = new Chart("chart-health");
    this.syncChart = new Chart("chart-sync");
  }

  apply({ kind, data }) {
    if (!data || typeof data !== "object") return;
    const t = Date.parse(data.generated_at) || Date.now();
    this.health.put(t, { health: data.network_health, integrity: data.data_integrity, latency: data.avg_latency });
    this.sync.add(data.sync_traffic);
    if (kind !== "history" && (!this.latest || (data.version || 0) >= (this.latest.version || 0))) this.latest = data;
  }

  reset() {
    this.latest = null;
    this.health.clear();
    this.sync.clear();
  }

  render() {
    const d = this.latest;
    if (!d) return;
    const peers = Array.isArray(d.peers) ? d.peers : [];
    const count = (s) => peers.filter((p) => p.status === s).length;
    const online = count("online");
    setValue("kpi-peers", String(peers.length), peers.length);
    const others = peers.length - online - count("degraded") - count("offline");
    text("kpi-peers-sub", `${online} online · ${count("degraded")} degraded · ${count("offline")} offline${others ? ` · ${others} other` : ""}`);
    setValue("kpi-health", `${fmt(d.network_health)} %`, d.network_health);
    setValue("kpi-integrity", `${fmt(d.data_integrity)} %`, d.data_integrity);
    setValue("kpi-latency", `${fmt(d.avg_latency)} ms`, d.avg_latency);
    showSources("federation", d.sources);
    this.renderMesh(peers);
    this.healthChart.set(
      {
        tooltip: TOOLTIP,
        legend: LEGEND,
        grid: GRID,
        xAxis: timeAxis(),
        yAxis: [valueAxis("%", { max: 100 }), valueAxis("ms", { splitLine: { show: false } })],
        series: [
          { name: "network health", type: "line", showSymbol: false, data: this.health.get("health"), color: COLORS.live },
          { name: "data integrity", type: "line", showSymbol: false, data: this.health.get("integrity"), color: COLORS.blue },
          { name: "avg latency", type: "line", showSymbol: false, yAxisIndex: 1, data: this.health.get("latency"), color: COLORS.purple },
        ],
      },
      this.health.length,
    );
    const buckets = this.sync.buckets(SYNC_BUCKET_MS);
    // An explicit window (at least the last 5 minutes, up to now): with one
    // bucket only, an automatic time axis would span days.
    const firstBucket = Math.min(...buckets.ok.concat(buckets.failed).map(([t]) => t), Date.now());
    const syncAxis = {
      ...timeAxis(),
      min: Math.min(firstBucket, Date.now() - 5 * 60 * 1000) - SYNC_BUCKET_MS,
      max: Date.now() + SYNC_BUCKET_MS,
    };
    this.syncChart.set(
      {
        tooltip: TOOLTIP,
        legend: LEGEND,
        grid: GRID,
        xAxis: syncAxis,
        yAxis: valueAxis("bytes", { min: 0 }),
        series: [
          { name: "succeeded", type: "bar", stack: "bytes", data: buckets.ok, color: COLORS.blue, barMaxWidth: 14 },
          { name: "failed", type: "bar", stack: "bytes", data: buckets.failed, color: COLORS.bad, barMaxWidth: 14 },
        ],
      },
      this.sync.size,
    );
    const now = Date.now();
    replaceRows(
      "peers-table",
      peers.map((p) => [
        p.id,
        p.hostname,
        p.trust_tier,
        { text: p.status, className: `status-${p.status}` },
        `${p.latency} ms`,
        { text: p.last_seen ? ago(now - p.last_seen) : "never", title: p.last_seen ? new Date(p.last_seen).toISOString() : "" },
      ]),
    );
  }

  renderMesh(peers) {
    const byTier = new Map();
    for (const p of peers) {
      const ring = TIER_RING[p.trust_tier] || 4;
      if (!byTier.has(ring)) byTier.set(ring, []);
      byTier.get(ring).push(p);
    }
    const nodes = [];
    for (const [ring, members] of byTier) {
      members.sort((a, b) => String(a.id).localeCompare(String(b.id)));
      members.forEach((p, i) => {
        const angle = (2 * Math.PI * i) / members.length + ring * 0.7;
        const radius = ring === 1 && members.length === 1 ? 0 : ring * 100;
        nodes.push({
          id: String(p.id),
          name: String(p.id),
          x: radius * Math.cos(angle),
          y: radius * Math.sin(angle),
          symbolSize: TIER_SIZE[p.trust_tier] || 16,
          itemStyle: { color: STATUS_COLOR[p.status] || COLORS.muted, borderColor: "#0f1419", borderWidth: 2 },
          tooltip: { formatter: `${p.id}\n${p.hostname} · ${p.trust_tier} · ${p.status} · ${p.latency} ms` },
        });
      });
    }
    const ids = new Set(nodes.map((n) => n.id));
    const links = this.sync
      .links(LINK_WINDOW_MS)
      .filter((l) => ids.has(String(l.source)) && ids.has(String(l.target)))
      .map((l) => ({
        source: String(l.source),
        target: String(l.target),
        lineStyle: { width: Math.min(6, 1 + Math.log2(l.count)), color: l.failed ? COLORS.bad : COLORS.muted, opacity: 0.7, curveness: 0.15 },
        tooltip: { formatter: `${l.source} → ${l.target}\n${l.count} sync events, ${l.failed} failed` },
      }));
    this.mesh.set(
      {
        tooltip: { trigger: "item", renderMode: "richText", confine: true },
        series: [
          {
            type: "graph",
            layout: "none",
            roam: true,
            data: nodes,
            links,
            edgeSymbol: ["none", "arrow"],
            edgeSymbolSize: 6,
            label: { show: true, position: "bottom", color: COLORS.text, fontSize: 11 },
            emphasis: { focus: "adjacency" },
          },
        ],
      },
      nodes.length,
    );
    this.mesh.el.dataset.links = String(links.length);
  }
}

export class MemoryView {
  constructor() {
    this.latest = null;
    this.rates = new SeriesSet(["ingestion", "consolidation"]);
    this.ratesChart = new Chart("chart-rates");
    this.trustChart = new Chart("chart-trust");
    this.deltasChart = new Chart("chart-deltas");
  }

  apply({ kind, data }) {
    if (!data || typeof data !== "object") return;
    const t = Date.parse(data.generated_at) || Date.now();
    this.rates.put(t, { ingestion: data.ingestion_rate, consolidation: data.consolidation_rate });
    if (kind !== "history" && (!this.latest || (data.version || 0) >= (this.latest.version || 0))) this.latest = data;
  }

  reset() {
    this.latest = null;
    this.rates.clear();
  }

  render() {
    const d = this.latest;
    if (!d) return;
    setValue("kpi-ingestion", fmt(d.ingestion_rate, 2), d.ingestion_rate);
    setValue("kpi-consolidation", fmt(d.consolidation_rate, 2), d.consolidation_rate);
    setValue("kpi-dedup", `${fmt(d.dedup_rate)} %`, d.dedup_rate);
    setValue("kpi-quarantine", String(d.quarantine_count ?? "–"), d.quarantine_count);
    showSources("memory", d.sources);
    this.ratesChart.set(
      {
        tooltip: TOOLTIP,
        legend: LEGEND,
        grid: GRID,
        xAxis: timeAxis(),
        yAxis: valueAxis("per s", { min: 0 }),
        series: [
          { name: "ingestion", type: "line", showSymbol: false, data: this.rates.get("ingestion"), color: COLORS.blue },
          { name: "consolidation", type: "line", showSymbol: false, data: this.rates.get("consolidation"), color: COLORS.live },
        ],
      },
      this.rates.length,
    );
    const trust = Object.entries(d.trust_distribution || {});
    this.trustChart.set(
      {
        tooltip: { trigger: "item", renderMode: "richText" },
        grid: { left: 80, right: 30, top: 10, bottom: 26 },
        xAxis: valueAxis("", { min: 0, minInterval: 1 }),
        yAxis: { type: "category", data: trust.map(([k]) => k), axisLabel: { color: COLORS.text } },
        series: [
          {
            type: "bar",
            data: trust.map(([, v]) => v),
            color: COLORS.blue,
            barMaxWidth: 22,
            label: { show: true, position: "right", color: COLORS.text },
          },
        ],
      },
      trust.length,
    );
    this.renderDeltas(Array.isArray(d.confidence_deltas) ? d.confidence_deltas : []);
    const logs = Array.isArray(d.logs) ? [...d.logs] : [];
    logs.sort((a, b) => String(b.timestamp).localeCompare(String(a.timestamp)));
    replaceRows(
      "log-table",
      logs.map((l) => [
        { text: l.timestamp ? new Date(l.timestamp).toLocaleTimeString() : "–", title: l.timestamp },
        l.type,
        { text: l.severity, className: `sev-${l.severity}` },
        { text: l.message, className: "message" },
      ]),
    );
  }

  renderDeltas(deltas) {
    const columns = 10;
    const rows = Math.max(1, Math.ceil(deltas.length / columns));
    const extent = Math.max(0.01, ...deltas.map((v) => Math.abs(Number(v) || 0)));
    const cells = deltas.map((v, i) => [i % columns, Math.floor(i / columns), Number(v)]);
    this.deltasChart.set(
      {
        tooltip: { trigger: "item", renderMode: "richText", formatter: (p) => `#${p.data[1] * columns + p.data[0] + 1}: ${p.data[2] >= 0 ? "+" : ""}${p.data[2].toFixed(4)}` },
        grid: { left: 30, right: 20, top: 8, bottom: 58 },
        xAxis: { type: "category", data: Array.from({ length: columns }, (_, i) => String(i + 1)), axisLabel: { color: COLORS.muted }, splitArea: { show: false } },
        yAxis: { type: "category", inverse: true, data: Array.from({ length: rows }, (_, i) => String(i * columns)), axisLabel: { color: COLORS.muted } },
        visualMap: {
          min: -extent,
          max: extent,
          calculable: false,
          orient: "horizontal",
          left: "center",
          bottom: 0,
          itemHeight: 160,
          itemWidth: 10,
          precision: 3,
          text: ["rising", "falling"],
          textStyle: { color: COLORS.muted },
          inRange: { color: [COLORS.bad, "#2a3441", COLORS.live] },
        },
        series: [{ type: "heatmap", data: cells, itemStyle: { borderColor: "#0f1419", borderWidth: 2 } }],
      },
      cells.length,
    );
  }
}

export class OperationsView {
  constructor() {
    /** replica → {report, seenAt} */
    this.replicas = new Map();
    /** Latest report per replica as of the report being processed (for totals over time). */
    this.asOf = new Map();
    this.msgs = new SeriesSet(["in", "out"]);
    /** replica → Series of connections */
    this.conns = new Map();
    this.msgsChart = new Chart("chart-ops-msgs");
    this.connsChart = new Chart("chart-ops-conns");
  }

  apply({ kind, data }) {
    if (!data || typeof data.replica !== "string") return;
    const t = Date.parse(data.at) || Date.now();
    const seenAt = kind === "history" ? t : Date.now();
    const known = this.replicas.get(data.replica);
    if (!known || Date.parse(known.report.at) <= t) this.replicas.set(data.replica, { report: data, seenAt });
    if (!this.conns.has(data.replica)) this.conns.set(data.replica, new Series());
    this.conns.get(data.replica).put(t, data.connections ? data.connections.total : NaN);
    this.asOf.set(data.replica, data);
    let inRate = NaN;
    let outRate = 0;
    for (const r of this.asOf.values()) {
      const at = Date.parse(r.at);
      if (r.draining || t - at > 3 * (r.interval_seconds || 5) * 1000) continue;
      // Every engine reports it; a report without it (a replica older than
      // this page, during an upgrade) adds nothing.
      if (typeof r.messages_in_per_second === "number") inRate = (Number.isNaN(inRate) ? 0 : inRate) + r.messages_in_per_second;
      outRate += r.messages_out_per_second || 0;
    }
    this.msgs.put(t, { in: inRate, out: outRate });
  }

  reset() {
    this.replicas.clear();
    this.asOf.clear();
    this.msgs.clear();
    this.conns.clear();
  }

  /** Replicas with their state: reporting, silent (no report for 3 intervals) or gone (draining). */
  states(now) {
    const out = [];
    for (const [name, { report, seenAt }] of this.replicas) {
      const age = now - seenAt;
      const limit = 3 * (report.interval_seconds || 5) * 1000;
      if (age > 10 * 60 * 1000) continue;
      const state = report.draining ? "draining" : age > limit ? "silent" : report.ready ? "ready" : "not ready";
      out.push({ name, report, age, state });
    }
    out.sort((a, b) => a.name.localeCompare(b.name));
    return out;
  }

  /** Whether any reporting replica was heard from recently. */
  anyReporting(now) {
    return this.states(now).some((s) => s.state === "ready" || s.state === "not ready");
  }

  render() {
    const now = Date.now();
    const states = this.states(now);
    const current = states.filter((s) => s.state === "ready" || s.state === "not ready");
    const sum = (f) => current.reduce((acc, s) => acc + (Number(f(s.report)) || 0), 0);
    const ready = current.filter((s) => s.state === "ready").length;
    setValue("kpi-replicas", `${ready} / ${current.length}`, current.length);
    const silent = states.filter((s) => s.state === "silent").length;
    const draining = states.filter((s) => s.state === "draining").length;
    text("kpi-replicas-sub", [`${ready} ready`, silent ? `${silent} silent` : "", draining ? `${draining} left` : ""].filter(Boolean).join(" · "));
    setValue("kpi-connections", String(sum((r) => r.connections && r.connections.total)), sum((r) => r.connections && r.connections.total));
    const anonymous = sum((r) => (r.connections && r.connections.anonymous) || 0);
    text("kpi-subscriptions", [`${sum((r) => r.subscriptions)} subscriptions`, anonymous ? `${anonymous} without a token` : ""].filter(Boolean).join(" · "));
    const measured = current.filter((s) => typeof s.report.messages_in_per_second === "number");
    const inRate = measured.length ? sum((r) => r.messages_in_per_second) : NaN;
    const outRate = sum((r) => r.messages_out_per_second);
    setValue("kpi-msgs", `${fmt(inRate)} → ${fmt(outRate)}`, outRate);
    setValue("kpi-slow", String(sum((r) => r.totals && r.totals.slow_consumer_closes)), sum((r) => r.totals && r.totals.slow_consumer_closes));
    const down = current.filter((s) => s.report.engine && !s.report.engine.ready);
    const kinds = new Set(current.map((s) => s.report.engine && s.report.engine.kind));
    const redisEl = text("kpi-redis", current.length === 0 ? "–" : down.length ? `down on ${down.length}` : kinds.has("redis") ? "ok" : "in-memory");
    redisEl.closest(".kpi").dataset.stale = String(down.length > 0);
    text(
      "kpi-redis-sub",
      down.length
        ? down.map((s) => `${s.name}: ${s.report.engine.detail}`).join("; ")
        : `${sum((r) => r.totals && r.totals.redis_reconnects)} reconnects · ${sum((r) => r.totals && r.totals.redis_errors)} errors`,
    );
    this.msgsChart.set(
      {
        tooltip: TOOLTIP,
        legend: LEGEND,
        grid: GRID,
        xAxis: timeAxis(),
        yAxis: valueAxis("msg/s", { min: 0 }),
        series: [
          { name: "in (from the engine)", type: "line", showSymbol: false, data: this.msgs.get("in"), color: COLORS.blue },
          { name: "out (to clients)", type: "line", showSymbol: false, data: this.msgs.get("out"), color: COLORS.live },
        ],
      },
      this.msgs.length,
    );
    const names = Array.from(this.conns.keys()).sort();
    this.connsChart.set(
      {
        tooltip: TOOLTIP,
        legend: { ...LEGEND, type: "scroll" },
        grid: GRID,
        xAxis: timeAxis(),
        yAxis: valueAxis("connections", { min: 0, minInterval: 1 }),
        series: names.map((n) => ({ name: n, type: "line", step: "end", showSymbol: false, data: this.conns.get(n).points })),
      },
      names.reduce((acc, n) => acc + this.conns.get(n).length, 0),
    );
    replaceRows(
      "replicas-table",
      states.map(({ name, report: r, age, state }) => {
        const c = r.connections || {};
        const e = r.engine || {};
        const t = r.totals || {};
        const statusText = state === "silent" ? `silent for ${Math.round(age / 1000)} s` : state === "not ready" ? `not ready: ${r.not_ready_reason || ""}` : state === "draining" ? "left (draining)" : "ready";
        const statusClass = state === "ready" ? "status-online" : state === "silent" ? "status-silent" : "status-bad";
        return [
          { text: name, title: `${r.role} ${r.version}` },
          { text: statusText, className: statusClass },
          {
            text: c.anonymous ? `${c.total ?? "–"} (${c.anonymous} anon.)` : String(c.total ?? "–"),
            title: `native ${c.native}, snapshot ${c.snapshot}, relay ${c.relay}, escai ${c.escai ?? 0}, council ${c.council ?? 0}; without a token ${c.anonymous ?? 0}`,
          },
          String(r.subscriptions ?? "–"),
          typeof r.messages_in_per_second === "number" ? fmt(r.messages_in_per_second) : "–",
          fmt(r.messages_out_per_second),
          String(t.slow_consumer_closes ?? "–"),
          { text: `${e.kind || "?"}: ${e.ready ? "ok" : "DOWN"}`, className: e.ready ? "" : "status-bad", title: `${e.detail || ""} · ${t.redis_errors ?? 0} errors, ${t.redis_reconnects ?? 0} reconnects` },
          duration(r.uptime_seconds || 0),
          ago(age),
        ];
      }),
    );
  }
}
