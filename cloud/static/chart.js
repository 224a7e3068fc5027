// A small SVG line chart: one line per device, the target band shaded, time on x. Redrawn whole
// on each change (a few hundred points: cheap) and on resize. The figure carries data-points,
// data-last-time (ms) and data-last-value so tests and tools can read what is drawn.

import { h, s, clear, metricInfo, formatValue } from './dom.js';

const HEIGHT = 180;
const PAD = { left: 46, right: 10, top: 10, bottom: 24 };
const COLORS = ['#2f7d4f', '#2b6cb0', '#b7791f', '#9b2c6f'];

export class LineChart {
  constructor(metric) {
    this.metric = metric;
    this.info = metricInfo(metric);
    this.band = null;
    this.series = new Map();  // device id → [[t ms, value], …] sorted by time
    this.from = Date.now() - 86400000;
    this.to = Date.now();
    this.live = true;
    this.svg = s('svg', { class: 'plot', role: 'img', height: HEIGHT });
    this.title = h('figcaption', {},
      h('span', { class: 'chart-title', text: this.info.label }),
      h('span', { class: 'chart-now', text: '–' }));
    this.el = h('figure', { class: 'chart', dataset: { metric } }, this.title, this.svg);
    this._observer = new ResizeObserver(() => this.render());
    this._observer.observe(this.el);
  }

  dispose() {
    this._observer.disconnect();
  }

  setBand(band) {
    this.band = band || null;
  }

  setRange(from, to, live) {
    this.from = from;
    this.to = to;
    this.live = live;
  }

  setData(rows) {
    // rows: [{device_id, time (ISO), value}]
    this.series = new Map();
    for (const row of rows) {
      const t = new Date(row.time).getTime();
      if (!this.series.has(row.device_id)) this.series.set(row.device_id, []);
      this.series.get(row.device_id).push([t, row.value]);
    }
    for (const points of this.series.values()) points.sort((a, b) => a[0] - b[0]);
    this.render();
  }

  // A live point; ignored when the chart shows a past range.
  add(device, t, value) {
    if (!this.live) return;
    if (!this.series.has(device)) this.series.set(device, []);
    const points = this.series.get(device);
    if (points.length && points[points.length - 1][0] >= t) {
      const i = points.findIndex((p) => p[0] >= t);
      if (points[i][0] === t) points[i][1] = value;
      else points.splice(i, 0, [t, value]);
    } else {
      points.push([t, value]);
    }
    const span = this.to - this.from;
    this.to = Math.max(this.to, t, Date.now());
    this.from = this.to - span;
    while (points.length && points[0][0] < this.from) points.shift();
    this.render();
  }

  _last() {
    let last = null;
    for (const points of this.series.values()) {
      const p = points[points.length - 1];
      if (p && (!last || p[0] > last[0])) last = p;
    }
    return last;
  }

  render() {
    const width = Math.max(240, Math.round(this.el.clientWidth || 600));
    this.svg.setAttribute('width', width);
    this.svg.setAttribute('viewBox', `0 0 ${width} ${HEIGHT}`);
    const values = [];
    let count = 0;
    for (const points of this.series.values()) {
      for (const [t, v] of points) {
        if (t >= this.from && t <= this.to) values.push(v);
      }
      count += points.length;
    }
    if (this.band) {
      if (this.band.min !== null) values.push(this.band.min);
      if (this.band.max !== null) values.push(this.band.max);
    }
    const last = this._last();
    this.el.dataset.points = String(count);
    this.el.dataset.lastTime = last ? String(last[0]) : '';
    this.el.dataset.lastValue = last ? String(last[1]) : '';
    this.title.lastChild.textContent = last ? formatValue(this.metric, last[1]) : '–';
    let lo = values.length ? Math.min(...values) : 0;
    let hi = values.length ? Math.max(...values) : 1;
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const padY = (hi - lo) * 0.08;
    lo -= padY;
    hi += padY;
    const plotW = width - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    const x = (t) => PAD.left + ((t - this.from) / (this.to - this.from)) * plotW;
    const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * plotH;
    const parts = [];
    if (this.band) {
      const top = this.band.max === null ? hi : Math.min(hi, this.band.max);
      const bottom = this.band.min === null ? lo : Math.max(lo, this.band.min);
      parts.push(s('rect', { class: 'band', x: PAD.left, width: plotW, y: y(top),
        height: Math.max(0, y(bottom) - y(top)) }));
    }
    for (const tick of ticks(lo, hi, 4)) {
      parts.push(s('line', { class: 'grid', x1: PAD.left, x2: width - PAD.right, y1: y(tick), y2: y(tick) }));
      parts.push(s('text', { class: 'axis', x: PAD.left - 4, y: y(tick) + 4, 'text-anchor': 'end' },
        tick.toFixed(this.info.digits)));
    }
    const span = this.to - this.from;
    for (const tick of timeTicks(this.from, this.to, Math.max(2, Math.floor(plotW / 90)))) {
      const label = span > 2 * 86400000
        ? new Date(tick).toLocaleDateString([], { month: 'short', day: 'numeric' })
        : new Date(tick).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      parts.push(s('text', { class: 'axis', x: x(tick), y: HEIGHT - 6, 'text-anchor': 'middle' }, label));
    }
    // A gap wider than this breaks the line (no data: the sensor or the link was down).
    const gap = Math.max(span / 60, 3 * 60000);
    let i = 0;
    for (const [device, points] of this.series) {
      const color = COLORS[i % COLORS.length];
      i += 1;
      let d = '';
      let prev = null;
      for (const [t, v] of points) {
        if (t < this.from || t > this.to) continue;
        d += `${prev === null || t - prev > gap ? 'M' : 'L'}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        prev = t;
      }
      if (d) parts.push(s('path', { class: 'line', d, stroke: color, 'data-device': device }));
    }
    if (last && last[0] >= this.from && last[0] <= this.to) {
      parts.push(s('circle', { class: 'last', cx: x(last[0]), cy: y(last[1]), r: 3 }));
    }
    const desc = `${this.info.label}: ${last ? formatValue(this.metric, last[1]) : 'no data'}`;
    this.svg.setAttribute('aria-label', desc);
    clear(this.svg, parts);
  }
}

function ticks(lo, hi, n) {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((m) => m >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
  return out;
}

function timeTicks(from, to, n) {
  const steps = [60e3, 300e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3,
    172800e3, 604800e3];
  const step = steps.find((m) => (to - from) / m <= n) || steps[steps.length - 1];
  const offset = new Date().getTimezoneOffset() * 60000;
  const out = [];
  for (let t = Math.ceil((from - offset) / step) * step + offset; t <= to; t += step) out.push(t);
  return out;
}
