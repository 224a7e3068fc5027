// A room's charts: a range picker (presets, or a custom from/to), one chart per metric with the
// stage's band shaded, kept live from the socket, and a download of the shown range.

import { inFarm, path } from './api.js';
import { LineChart } from './chart.js';
import { h, clear, BANDED, clock } from './dom.js';

const RANGES = [
  { key: '1h', label: '1 h', ms: 3600e3, bucket: '1m' },
  { key: '6h', label: '6 h', ms: 6 * 3600e3, bucket: '1m' },
  { key: '24h', label: '24 h', ms: 86400e3, bucket: '5m' },
  { key: '7d', label: '7 d', ms: 7 * 86400e3, bucket: '1h' },
  { key: '30d', label: '30 d', ms: 30 * 86400e3, bucket: '1h' },
];

export function chartsSection(ctx, farmId, roomId) {
  const { api } = ctx;
  const roomUrl = (rest = '') => inFarm(path`/api/rooms/${roomId}` + rest, farmId);
  const charts = new Map(BANDED.map((metric) => [metric, new LineChart(metric)]));
  const rangeButtons = h('div', { class: 'ranges', role: 'group', 'aria-label': 'range' });
  const fromInput = h('input', { type: 'datetime-local', 'aria-label': 'from' });
  const toInput = h('input', { type: 'datetime-local', 'aria-label': 'to' });
  const rangeNote = h('span', { class: 'muted small' });
  const csvButton = h('button', { type: 'button', text: 'Download CSV', title: 'the shown range as CSV' });
  let range = { key: '24h', from: Date.now() - 86400e3, to: Date.now(), live: true, bucket: '5m' };

  function telemetryUrl(format) {
    const from = new Date(range.from).toISOString();
    const to = new Date(range.live ? Date.now() + 60e3 : range.to).toISOString();
    let url = roomUrl(path`/telemetry?from=${from}&to=${to}`);
    for (const metric of BANDED) url += path`&metric=${metric}`;
    if (format === 'csv') {
      // ≤ 24 h: every reading; longer: the buckets the chart shows (a month raw is too big).
      if (range.to - range.from > 86400e3 + 60e3) url += path`&bucket=${range.bucket}`;
      return `${url}&format=csv`;
    }
    return url + path`&bucket=${range.bucket}&agg=avg`;
  }

  async function loadCharts() {
    rangeNote.textContent = 'loading…';
    const answer = await api.get(telemetryUrl('json'));
    for (const [metric, chart] of charts) {
      chart.setRange(range.from, range.live ? Math.max(Date.now(), range.to) : range.to, range.live);
      chart.setData(answer.items.filter((row) => row.metric === metric));
    }
    rangeNote.textContent = range.live
      ? `live · ${range.bucket} averages, then every reading`
      : `${clock(range.from)} – ${clock(range.to)} · ${range.bucket} averages`;
    for (const button of rangeButtons.querySelectorAll('button')) {
      button.setAttribute('aria-pressed', String(button.dataset.range === range.key));
    }
  }

  function pick(key) {
    const preset = RANGES.find((r) => r.key === key);
    range = { key, from: Date.now() - preset.ms, to: Date.now(), live: true, bucket: preset.bucket };
    loadCharts().catch((err) => { rangeNote.textContent = `Could not load: ${err.message}`; });
  }

  clear(rangeButtons, RANGES.map((r) => h('button', {
    type: 'button', text: r.label, dataset: { range: r.key }, onclick: () => pick(r.key),
  })));
  const customForm = h('form', { class: 'inline custom-range' }, fromInput, toInput,
    h('button', { type: 'submit', text: 'Show' }));
  customForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const from = new Date(fromInput.value).getTime();
    const to = toInput.value ? new Date(toInput.value).getTime() : Date.now();
    if (!(from < to)) {
      rangeNote.textContent = 'Pick a start before the end.';
      return;
    }
    const span = to - from;
    const bucket = span <= 6 * 3600e3 ? '1m' : span <= 2 * 86400e3 ? '5m' : span <= 60 * 86400e3 ? '1h' : '1d';
    range = { key: 'custom', from, to, live: false, bucket };
    loadCharts().catch((err) => { rangeNote.textContent = `Could not load: ${err.message}`; });
  });

  csvButton.addEventListener('click', async () => {
    csvButton.disabled = true;
    try {
      const blob = await api.blob(telemetryUrl('csv'), 'text/csv');
      const url = URL.createObjectURL(blob);
      const stamp = new Date(range.from).toISOString().slice(0, 16).replace(':', '');
      const link = h('a', { href: url, download: `${farmId}-${roomId}-${stamp}-${range.key}.csv` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      rangeNote.textContent = `CSV failed: ${err.message}`;
    } finally {
      csvButton.disabled = false;
    }
  });

  const el = h('section', { class: 'card charts', 'aria-label': 'charts' },
    h('div', { class: 'row wrap' }, rangeButtons, customForm, csvButton),
    rangeNote,
    h('div', { class: 'chart-list' }, [...charts.values()].map((c) => c.el)));

  return {
    el,
    load: loadCharts,
    // The room's bands (its stage) changed.
    setRoom(room) {
      for (const [metric, chart] of charts) {
        chart.setBand(room.bands[metric]);
        chart.render();
      }
    },
    // A live reading from one of the room's devices.
    reading(msg) {
      for (const [metric, value] of Object.entries(msg.values)) {
        const chart = charts.get(metric);
        if (chart) chart.add(msg.device_id, msg.time * 1000, value);
      }
    },
    dispose() {
      for (const chart of charts.values()) chart.dispose();
    },
  };
}
