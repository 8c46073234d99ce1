// Time series kept by the page: points sorted by time (history can arrive
// after newer live points), one point per timestamp, trimmed by age and count.

export const WINDOW_MS = 15 * 60 * 1000;
const MAX_POINTS = 900;

export class Series {
  constructor(windowMs = WINDOW_MS, maxPoints = MAX_POINTS) {
    this.windowMs = windowMs;
    this.maxPoints = maxPoints;
    /** @type {Array<[number, number]>} */
    this.points = [];
  }

  /** Inserts (t, v) in time order; a point at the same time is replaced. */
  put(t, v) {
    if (!Number.isFinite(t) || !Number.isFinite(v)) return;
    const p = this.points;
    let lo = 0;
    let hi = p.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (p[mid][0] < t) lo = mid + 1;
      else hi = mid;
    }
    if (lo < p.length && p[lo][0] === t) p[lo] = [t, v];
    else p.splice(lo, 0, [t, v]);
    this.trim();
  }

  trim() {
    const p = this.points;
    if (p.length === 0) return;
    const newest = p[p.length - 1][0];
    let drop = 0;
    while (drop < p.length && p[drop][0] < newest - this.windowMs) drop++;
    drop = Math.max(drop, p.length - this.maxPoints);
    if (drop > 0) p.splice(0, drop);
  }

  clear() {
    this.points = [];
  }

  get length() {
    return this.points.length;
  }
}

/** A set of named series sharing a time axis. */
export class SeriesSet {
  constructor(names, windowMs = WINDOW_MS) {
    this.series = new Map(names.map((n) => [n, new Series(windowMs)]));
  }

  put(t, values) {
    for (const [name, value] of Object.entries(values)) {
      const s = this.series.get(name);
      if (s) s.put(t, value);
    }
  }

  get(name) {
    return this.series.get(name).points;
  }

  clear() {
    for (const s of this.series.values()) s.clear();
  }

  get length() {
    let n = 0;
    for (const s of this.series.values()) n = Math.max(n, s.length);
    return n;
  }
}

/**
 * Sync events seen in the snapshots (each holds the 10 newest), kept once
 * each, for the traffic chart and the mesh's links.
 */
export class SyncLog {
  constructor(windowMs = WINDOW_MS) {
    this.windowMs = windowMs;
    this.events = new Map();
  }

  add(events) {
    for (const e of events || []) {
      if (!e || typeof e.timestamp !== "number") continue;
      const key = `${e.timestamp}|${e.source}|${e.target}|${e.event_type}`;
      if (!this.events.has(key)) this.events.set(key, e);
    }
    const newest = Math.max(0, ...Array.from(this.events.values(), (e) => e.timestamp));
    for (const [key, e] of this.events) {
      if (e.timestamp < newest - this.windowMs) this.events.delete(key);
    }
  }

  clear() {
    this.events.clear();
  }

  /** Bytes per bucket, split by outcome: {ok: [[t, bytes]], failed: [[t, bytes]]}. */
  buckets(bucketMs) {
    const ok = new Map();
    const failed = new Map();
    for (const e of this.events.values()) {
      const t = Math.floor(e.timestamp / bucketMs) * bucketMs;
      const m = e.success ? ok : failed;
      m.set(t, (m.get(t) || 0) + (Number(e.bytes) || 0));
    }
    const sorted = (m) => Array.from(m.entries()).sort((a, b) => a[0] - b[0]);
    return { ok: sorted(ok), failed: sorted(failed) };
  }

  /** Links between peers in the last `sinceMs`: {source, target, count, failed}. */
  links(sinceMs) {
    const newest = Math.max(0, ...Array.from(this.events.values(), (e) => e.timestamp));
    const links = new Map();
    for (const e of this.events.values()) {
      if (e.timestamp < newest - sinceMs || e.source === e.target) continue;
      const key = `${e.source}→${e.target}`;
      const l = links.get(key) || { source: e.source, target: e.target, count: 0, failed: 0 };
      l.count += 1;
      if (!e.success) l.failed += 1;
      links.set(key, l);
    }
    return Array.from(links.values());
  }

  get size() {
    return this.events.size;
  }
}
