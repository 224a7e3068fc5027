// A line chart in SVG: one line per device (with its buckets' min–max envelope), the target band
// of the stage that held at each moment shaded behind them, actuator on/off lanes under the plot, logbook markers, a crosshair with every
// value at that time (mouse, touch or keyboard), zoom (drag-select, ctrl+wheel or pinch, keys) and
// pan (shift+drag, keys). Redrawn whole on each change (a few thousand points: cheap) and on
// resize. The figure carries data-points, data-last-time (ms), data-last-value, data-view-from,
// data-view-to and data-empty so tests and tools can read what is drawn.

import { h, s, clear, metricInfo, formatValue, bandText } from './dom.js';
import { PAD, PLOT_H, moment, valueTicks, timeTicks, decimalsOf } from './chart-axes.js';
import { bindInput, drawSelection, pointerX } from './chart-input.js';

export { moment, hhmm, dayMonth, timeTicks, valueTicks } from './chart-axes.js';

const LANE_H = 16;
const AXIS_H = 22;
export const COLORS = ['#2f7d4f', '#2b6cb0', '#b7791f', '#9b2c6f', '#5a4fcf', '#c05621'];
const MIN_VIEW_MS = 5 * 60e3;
const DAY = 86400e3;
let nextId = 0;

export class LineChart {
  // options: onView(from, to) when the user zooms or pans (null, null: reset), names (device →
  // label), kinds (logbook kind → label).
  constructor(metric, options = {}) {
    this.metric = metric;
    this.info = metricInfo(metric);
    this.options = options;
    this.id = `chart-${(nextId += 1)}`;
    this.band = null;        // the band when no per-stage segments are known
    this.stages = [];        // [{from, to, stage, label, band}]
    this.lanes = [];         // [{id, label, intervals: [[from, to]], known: from|null}]
    this.markers = [];       // [{t, kind, label, title, text}]
    this.names = new Map();  // device id → name
    this.series = new Map(); // device id → [[t ms, value], …] sorted by time
    this.from = Date.now() - DAY;
    this.to = Date.now();
    this.view = null;        // {from, to} when zoomed in
    this.live = true;
    this.cursor = null;      // the crosshair's time
    this.svg = s('svg', { class: 'plot', role: 'img', tabindex: '0', 'aria-describedby': `${this.id}-tip` });
    this.tip = h('div', { class: 'chart-tip', id: `${this.id}-tip`, role: 'tooltip', hidden: true });
    this.live_ = h('p', { class: 'visually-hidden', 'aria-live': 'polite' });
    this.empty = h('p', { class: 'chart-empty', text: 'No data for this range', hidden: true });
    this.title = h('figcaption', {},
      h('span', { class: 'chart-title', text: this.info.unit ? `${this.info.label} (${this.info.unit})` : this.info.label }),
      h('span', { class: 'chart-now', text: '–' }));
    this.legend = h('ul', { class: 'chart-legend', hidden: true, 'aria-label': 'devices' });
    this.el = h('figure', { class: 'chart', dataset: { metric } }, this.title, this.legend,
      h('div', { class: 'plot-wrap' }, this.svg, this.empty, this.tip), this.live_);
    this._pointers = new Map();
    this._drag = null;
    this._bind();
    this._observer = new ResizeObserver(() => this.render());
    this._observer.observe(this.el);
  }

  dispose() {
    this._observer.disconnect();
  }

  setBand(band) {
    this.band = band || null;
  }

  setStages(segments) {
    this.stages = segments || [];
  }

  setLanes(lanes) {
    this.lanes = lanes || [];
  }

  setMarkers(markers) {
    this.markers = markers || [];
  }

  setNames(names) {
    this.names = names || new Map();
  }

  setRange(from, to, live) {
    this.from = from;
    this.to = to;
    this.live = live;
  }

  // The zoomed window inside the range, or null for the whole range.
  setView(view) {
    this.view = view ? { from: Math.max(this.from, view.from), to: Math.min(this.to, view.to) } : null;
    if (this.view && this.view.to - this.view.from < 1000) this.view = null;
  }

  get shown() {
    return this.view || { from: this.from, to: this.to };
  }

  setData(rows) {
    // rows: [{device_id, t (ms) or time (ISO), value, min?, max?}]; min and max (a bucket's
    // spread) are drawn as a light envelope around the line.
    this.series = new Map();
    for (const row of rows) {
      const t = row.t === undefined ? new Date(row.time).getTime() : row.t;
      if (!this.series.has(row.device_id)) this.series.set(row.device_id, []);
      const point = [t, row.value];
      if (row.min !== undefined && row.max !== undefined) point.push(row.min, row.max);
      this.series.get(row.device_id).push(point);
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

  _label(device) {
    const name = this.names.get(device);
    return this.series.size > 1 || !name ? (name || device) : name;
  }

  // The band in force at time t: the stage segment's, else the single band.
  bandAt(t) {
    if (!this.stages.length) return this.band ? { band: this.band, stage: null } : null;
    const seg = this.stages.find((g) => t >= g.from && t < g.to);
    return seg && seg.band ? { band: seg.band, stage: seg.label } : null;
  }

  _geometry() {
    const width = Math.max(240, Math.round(this.svg.parentElement.clientWidth || this.el.clientWidth || 600));
    const lanesH = this.lanes.length ? this.lanes.length * LANE_H + 6 : 0;
    const height = PAD.top + PLOT_H + lanesH + AXIS_H;
    const plotW = width - PAD.left - PAD.right;
    const { from, to } = this.shown;
    const x = (t) => PAD.left + ((t - from) / (to - from)) * plotW;
    const time = (px) => from + ((px - PAD.left) / plotW) * (to - from);
    return { width, height, plotW, lanesH, from, to, x, time };
  }

  render() {
    const g = this._geometry();
    this._g = g;
    const { width, height, plotW, from, to, x } = g;
    this.svg.setAttribute('width', width);
    this.svg.setAttribute('height', height);
    this.svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    const values = [];
    let count = 0;
    let shown = 0;
    for (const points of this.series.values()) {
      for (const p of points) {
        if (p[0] >= from && p[0] <= to) {
          values.push(p[1]);
          if (p.length > 3) values.push(p[2], p[3]);
          shown += 1;
        }
      }
      count += points.length;
    }
    const bands = this.stages.length
      ? this.stages.filter((seg) => seg.band && seg.to > from && seg.from < to).map((seg) => seg.band)
      : (this.band ? [this.band] : []);
    if (shown) {
      for (const band of bands) {
        if (band.min !== null && band.min !== undefined) values.push(band.min);
        if (band.max !== null && band.max !== undefined) values.push(band.max);
      }
    }
    const last = this._last();
    this.el.dataset.points = String(count);
    this.el.dataset.lastTime = last ? String(last[0]) : '';
    this.el.dataset.lastValue = last ? String(last[1]) : '';
    this.el.dataset.viewFrom = String(Math.round(from));
    this.el.dataset.viewTo = String(Math.round(to));
    this.el.dataset.empty = String(shown === 0);
    this.empty.hidden = shown !== 0;
    this.title.lastChild.textContent = last ? formatValue(this.metric, last[1]) : '–';
    // (a loop, not Math.min(...values): a live day of raw readings is too many arguments)
    let lo = values.length ? Infinity : 0;
    let hi = values.length ? -Infinity : 1;
    for (const v of values) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const padY = (hi - lo) * 0.08;
    lo -= padY;
    hi += padY;
    const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * PLOT_H;
    this._y = { lo, hi, y };
    const parts = [];
    parts.push(s('defs', {}, s('clipPath', { id: `${this.id}-clip` },
      s('rect', { x: PAD.left, y: PAD.top, width: plotW, height: PLOT_H }))));
    // Target bands: one per stage segment, each against its own stage.
    const bandLayer = s('g', { class: 'bands', 'clip-path': `url(#${this.id}-clip)` });
    const segments = this.stages.length ? this.stages : (this.band ? [{ from, to, band: this.band, label: null }] : []);
    for (const seg of segments) {
      if (seg.to <= from || seg.from >= to) continue;
      const x0 = Math.max(PAD.left, x(seg.from));
      const x1 = Math.min(PAD.left + plotW, x(seg.to));
      if (seg.band) {
        const top = seg.band.max === null || seg.band.max === undefined ? hi : Math.min(hi, seg.band.max);
        const bottom = seg.band.min === null || seg.band.min === undefined ? lo : Math.max(lo, seg.band.min);
        bandLayer.append(s('rect', { class: 'band', x: x0, width: Math.max(0, x1 - x0), y: y(top),
          height: Math.max(0, y(bottom) - y(top)), 'data-stage': seg.stage || '' },
        s('title', {}, `${seg.label ? `${seg.label}: ` : ''}target ${bandText(this.metric, seg.band)}`)));
      }
      if (seg.label && this.stages.length > 0) {
        if (seg.from > from) {
          bandLayer.append(s('line', { class: 'stage-edge', x1: x(seg.from), x2: x(seg.from), y1: PAD.top, y2: PAD.top + PLOT_H }));
        }
        if (x1 - x0 > 60) {
          bandLayer.append(s('text', { class: 'stage-label', x: x0 + 4, y: PAD.top + 10 }, seg.label));
        }
      }
    }
    parts.push(bandLayer);
    const yTicks = valueTicks(lo, hi, 4);
    // As many decimals as the step needs, so no two labels read the same.
    const decimals = Math.max(0, ...yTicks.map(decimalsOf));
    for (const tick of yTicks) {
      parts.push(s('line', { class: 'grid', x1: PAD.left, x2: width - PAD.right, y1: y(tick), y2: y(tick) }));
      parts.push(s('text', { class: 'axis', x: PAD.left - 4, y: y(tick) + 4, 'text-anchor': 'end' },
        tick.toFixed(Math.min(decimals, 3))));
    }
    const axisY = PAD.top + PLOT_H + g.lanesH + 15;
    for (const tick of timeTicks(from, to, plotW)) {
      parts.push(s('line', { class: 'grid vgrid', x1: x(tick.t), x2: x(tick.t), y1: PAD.top, y2: PAD.top + PLOT_H }));
      parts.push(s('text', { class: 'axis time-tick', x: x(tick.t), y: axisY, 'text-anchor': 'middle',
        'data-t': tick.t, 'data-major': String(tick.major) }, tick.label));
    }
    // Actuator lanes under the plot: one per actuator, on-intervals filled, unknown hatched.
    this.lanes.forEach((lane, i) => {
      const top = PAD.top + PLOT_H + 4 + i * LANE_H;
      const row = s('g', { class: 'lane', 'data-device': lane.id });
      row.append(s('rect', { class: 'lane-bg', x: PAD.left, y: top, width: plotW, height: LANE_H - 3 }));
      if (lane.known !== null && lane.known !== undefined && lane.known > from) {
        row.append(s('rect', { class: 'lane-unknown', x: PAD.left, y: top,
          width: Math.max(0, Math.min(x(lane.known), PAD.left + plotW) - PAD.left), height: LANE_H - 3 }));
      }
      for (const [a, b] of lane.intervals) {
        if (b <= from || a >= to) continue;
        const x0 = Math.max(PAD.left, x(a));
        const x1 = Math.min(PAD.left + plotW, x(b));
        row.append(s('rect', { class: 'lane-on', x: x0, y: top, width: Math.max(1.5, x1 - x0), height: LANE_H - 3,
          'data-from': a, 'data-to': b }, s('title', {}, b === Infinity ? `${lane.label} on since ${moment(a)}` : `${lane.label} on ${moment(a)} – ${moment(b)}`)));
      }
      row.append(s('text', { class: 'lane-label', x: PAD.left + 4, y: top + LANE_H - 6 }, lane.label));
      parts.push(row);
    });
    // A gap wider than this breaks the line (no data: the sensor or the link was down).
    const span = to - from;
    const gap = Math.max(span / 60, 3 * 60000, this._step() * 2.5);
    const lines = s('g', { 'clip-path': `url(#${this.id}-clip)` });
    let i = 0;
    for (const [device, points] of this.series) {
      const color = COLORS[i % COLORS.length];
      i += 1;
      let d = '';
      let prev = null;
      // The envelope: each unbroken run's maxima left to right, then its minima back.
      let area = '';
      let run = [];
      const closeRun = () => {
        if (run.length > 1) {
          area += `M${run.map((p) => `${x(p[0]).toFixed(1)},${y(p[3]).toFixed(1)}`).join('L')}`;
          area += `L${run.reverse().map((p) => `${x(p[0]).toFixed(1)},${y(p[2]).toFixed(1)}`).join('L')}Z`;
        }
        run = [];
      };
      for (const p of points) {
        const [t, v] = p;
        if (t < from || t > to) { prev = null; closeRun(); continue; }
        if (prev === null || t - prev > gap) closeRun();
        d += `${prev === null || t - prev > gap ? 'M' : 'L'}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        if (p.length > 3) run.push(p);
        prev = t;
      }
      closeRun();
      if (area) lines.append(s('path', { class: 'envelope', d: area, fill: color }));
      if (d) lines.append(s('path', { class: 'line', d, stroke: color, 'data-device': device }));
    }
    parts.push(lines);
    for (const marker of this.markers) {
      if (marker.t < from || marker.t > to) continue;
      const mx = x(marker.t);
      parts.push(s('g', { class: `marker kind-${marker.kind}`, 'data-t': marker.t },
        s('line', { x1: mx, x2: mx, y1: PAD.top, y2: PAD.top + PLOT_H }),
        s('path', { d: `M${mx - 5},${PAD.top - 8}h10l-5,7z` }),
        s('title', {}, `${moment(marker.t)} · ${marker.label}: ${marker.title}`)));
    }
    if (last && last[0] >= from && last[0] <= to) {
      parts.push(s('circle', { class: 'last', cx: x(last[0]), cy: y(last[1]), r: 3 }));
    }
    this._overlay = s('g', { class: 'overlay' });
    parts.push(this._overlay);
    const desc = `${this.info.label} chart, ${moment(from)} to ${moment(to)}: ${
      shown ? `latest ${last ? formatValue(this.metric, last[1]) : '–'}` : 'no data for this range'}.`
      + ' Arrow keys move the crosshair; plus and minus zoom; shift and arrows pan; 0 resets.';
    this.svg.setAttribute('aria-label', desc);
    clear(this.svg, parts);
    this._legend();
    if (this.cursor !== null) this._showCursor(this.cursor);
    else if (this._echo !== null && this._echo !== undefined) this.echo(this._echo);
  }

  // With more than one device on a chart, which colour is which.
  _legend() {
    if (this.series.size < 2) {
      this.legend.hidden = true;
      return;
    }
    let i = 0;
    clear(this.legend, [...this.series.keys()].map((device) => {
      const item = h('li', {}, h('span', { class: `swatch c${i % COLORS.length}` }), this._label(device));
      i += 1;
      return item;
    }));
    this.legend.hidden = false;
  }

  // The typical distance between points (the bucket width), for gaps and keyboard steps.
  _step() {
    for (const points of this.series.values()) {
      if (points.length > 2) {
        const diffs = [];
        for (let k = 1; k < Math.min(points.length, 40); k += 1) diffs.push(points[k][0] - points[k - 1][0]);
        diffs.sort((a, b) => a - b);
        return diffs[Math.floor(diffs.length / 2)] || 60e3;
      }
    }
    return 60e3;
  }

  // Per device, the point nearest to t (within a few steps), for the tooltip.
  valuesAt(t) {
    const out = [];
    const tolerance = Math.max(this._step() * 1.5, (this.shown.to - this.shown.from) / 200);
    let i = 0;
    for (const [device, points] of this.series) {
      const color = COLORS[i % COLORS.length];
      i += 1;
      const p = nearest(points, t);
      if (p && Math.abs(p[0] - t) <= tolerance) {
        out.push({ device, label: this._label(device), color, t: p[0], value: p[1],
          min: p.length > 3 ? p[2] : null, max: p.length > 3 ? p[3] : null });
      }
    }
    return out;
  }

  lanesAt(t) {
    return this.lanes.map((lane) => {
      if (lane.known !== null && lane.known !== undefined && t < lane.known) return { label: lane.label, state: 'unknown' };
      const on = lane.intervals.some(([a, b]) => t >= a && t < b);
      return { label: lane.label, state: on ? 'on' : 'off' };
    });
  }

  _showCursor(t) {
    const g = this._g;
    if (!g || !this._overlay) return;
    const { from, to, x } = g;
    if (t < from || t > to) { this._hideCursor(); return; }
    this.cursor = t;
    const values = this.valuesAt(t);
    const at = values.length ? values[0].t : t;
    const cx = x(at);
    const parts = [s('line', { class: 'crosshair', x1: cx, x2: cx, y1: PAD.top, y2: PAD.top + PLOT_H + g.lanesH })];
    for (const v of values) {
      parts.push(s('circle', { class: 'hover-dot', cx: x(v.t), cy: this._y.y(v.value), r: 4, fill: v.color }));
    }
    clear(this._overlay, parts);
    this._echo = null;
    if (this.options.onCursor) this.options.onCursor(this, at);
    const rows = [h('p', { class: 'tip-time', text: moment(at) })];
    if (!values.length) rows.push(h('p', { class: 'muted', text: 'no reading here' }));
    for (const v of values) {
      const spread = v.min !== null && v.max - v.min > 1e-9
        ? ` (${formatValue(this.metric, v.min)} – ${formatValue(this.metric, v.max)})` : '';
      rows.push(h('p', { class: 'tip-value' }, h('span', { class: `swatch c${COLORS.indexOf(v.color)}` }),
        `${v.label}: `, h('strong', { text: formatValue(this.metric, v.value) }), spread));
    }
    const band = this.bandAt(at);
    if (band) rows.push(h('p', { class: 'tip-band', text: `Target${band.stage ? ` (${band.stage})` : ''}: ${bandText(this.metric, band.band)}` }));
    for (const lane of this.lanesAt(at)) {
      rows.push(h('p', { class: `tip-lane ${lane.state}`, text: `${lane.label}: ${lane.state}` }));
    }
    const near = (g.to - g.from) / g.plotW * 8;
    for (const marker of this.markers.filter((m) => Math.abs(m.t - at) <= near)) {
      rows.push(h('p', { class: 'tip-marker', text: `${marker.label} ${moment(marker.t)}: ${marker.title}` }));
    }
    clear(this.tip, rows);
    this.tip.hidden = false;
    const wrapW = this.svg.parentElement.clientWidth || g.width;
    const tipW = this.tip.offsetWidth || 180;
    const left = cx + 12 + tipW > wrapW ? Math.max(0, cx - 12 - tipW) : cx + 12;
    this.tip.style.left = `${Math.round(left)}px`;
    this.tip.style.top = `${PAD.top}px`;
    this.el.dataset.cursor = String(Math.round(at));
    if (this._announce) {
      this.live_.textContent = [moment(at), ...values.map((v) => `${v.label} ${formatValue(this.metric, v.value)}`)].join(', ');
    }
  }

  _hideCursor() {
    const had = this.cursor !== null;
    this.cursor = null;
    this.tip.hidden = true;
    delete this.el.dataset.cursor;
    if (this._overlay) clear(this._overlay);
    if (had && this.options.onCursor) this.options.onCursor(this, null);
  }

  // Another chart's crosshair at time t (null: gone): the line and the dots here, no tooltip.
  echo(t) {
    this._echo = t;
    if (this.cursor !== null || !this._overlay || !this._g) return;
    if (t === null || t < this._g.from || t > this._g.to) {
      clear(this._overlay);
      return;
    }
    const cx = this._g.x(t);
    clear(this._overlay,
      s('line', { class: 'crosshair echo', x1: cx, x2: cx, y1: PAD.top, y2: PAD.top + PLOT_H + this._g.lanesH }),
      this.valuesAt(t).map((v) => s('circle', { class: 'hover-dot', cx: this._g.x(v.t), cy: this._y.y(v.value), r: 3.5, fill: v.color })));
  }

  _zoomTo(from, to) {
    const span = Math.max(MIN_VIEW_MS, to - from);
    let a = (from + to) / 2 - span / 2;
    let b = a + span;
    if (a < this.from) { b += this.from - a; a = this.from; }
    if (b > this.to) { a -= b - this.to; b = this.to; }
    a = Math.max(this.from, a);
    const full = a <= this.from + 1 && b >= this.to - 1;
    if (this.options.onView) this.options.onView(full ? null : { from: a, to: b });
    else { this.setView(full ? null : { from: a, to: b }); this.render(); }
  }

  // Zoom by `factor` (< 1 in, > 1 out) around time `t` (default: the middle).
  zoom(factor, t) {
    const { from, to } = this.shown;
    const center = t === undefined ? (from + to) / 2 : t;
    this._zoomTo(center - (center - from) * factor, center + (to - center) * factor);
  }

  pan(share) {
    const { from, to } = this.shown;
    const d = (to - from) * share;
    this._zoomTo(from + d, to + d);
  }

  _px(event) {
    return pointerX(this, event);
  }

  _bind() {
    bindInput(this);
  }

  _drawSelection() {
    drawSelection(this);
  }
}

function nearest(points, t) {
  let lo = 0;
  let hi = points.length - 1;
  if (hi < 0) return null;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid][0] < t) lo = mid + 1;
    else hi = mid;
  }
  const p = points[lo];
  const q = lo > 0 ? points[lo - 1] : null;
  return q && Math.abs(q[0] - t) < Math.abs(p[0] - t) ? q : p;
}
