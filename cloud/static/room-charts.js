// A room's charts: a range picker (presets, or a custom from/to), one chart per metric the room
// has (a picker hides the ones not wanted), each with the target band of the stage that held at
// each moment, the actuators' on/off lanes and the logbook's entries as markers; zoom and pan
// shared by every chart (finer data is fetched for the zoomed window), kept live from the socket,
// and a download of the shown window and metrics as CSV or Parquet, long or wide.

import { inFarm, path } from './api.js';
import { LineChart, moment } from './chart.js';
import { h, clear, BANDED, METRICS, NODE_METRICS, metricInfo, stageLabel, actuatorLabel } from './dom.js';

const RANGES = [
  { key: '1h', label: '1 h', ms: 3600e3, bucket: '1m' },
  { key: '6h', label: '6 h', ms: 6 * 3600e3, bucket: '1m' },
  { key: '24h', label: '24 h', ms: 86400e3, bucket: '5m' },
  { key: '7d', label: '7 d', ms: 7 * 86400e3, bucket: '1h' },
  { key: '30d', label: '30 d', ms: 30 * 86400e3, bucket: '1h' },
];
const BUCKET_WORDS = { '1m': '1-min', '5m': '5-min', '1h': 'hourly', '1d': 'daily' };
const KIND_LABELS = { batch: 'New batch', stage: 'Stage', note: 'Note', harvest: 'Harvest' };
// Stage entries this long before the range still tell which stage held at its start.
const STAGE_LOOKBACK = 120 * 86400e3;
const HIDDEN_KEY = 'smartfarm.charts.hidden';

function bucketFor(span) {
  if (span <= 6 * 3600e3) return '1m';
  if (span <= 2 * 86400e3) return '5m';
  if (span <= 60 * 86400e3) return '1h';
  return '1d';
}

const iso = (t) => new Date(t).toISOString();
const ms = (text) => new Date(text).getTime();

function localInput(t) {
  const d = new Date(t - new Date(t).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 16);
}

function loadHidden() {
  try {
    const saved = JSON.parse(localStorage.getItem(HIDDEN_KEY) || 'null');
    if (Array.isArray(saved)) return new Set(saved);
  } catch (err) {
    // a corrupt value: the defaults
  }
  return new Set(NODE_METRICS);
}

// The stage that held at each moment of [from, to): the room's current stage since it started,
// before that the logbook's stage entries; before the first known one, unknown (no band).
export function stageSegments(room, entries, from, to, metric, bandsByStage) {
  if (!room) return [];
  const started = ms(room.stage_started);
  const events = entries
    .filter((e) => e.kind === 'stage' && e.stage && ms(e.at) < started - 1000)
    .map((e) => ({ t: ms(e.at), stage: e.stage }))
    .sort((a, b) => a.t - b.t);
  events.push({ t: started, stage: room.stage });
  const bandOf = (stage) => {
    const known = bandsByStage && bandsByStage[stage] && bandsByStage[stage][metric];
    if (known) return known;
    return stage === room.stage && room.bands ? room.bands[metric] || null : null;
  };
  const out = [];
  if (events[0].t > from) out.push({ from, to: Math.min(to, events[0].t), stage: null, label: null, band: null });
  events.forEach((ev, i) => {
    // The last stage holds on (a live chart keeps sliding past `to`).
    const b = i + 1 < events.length ? events[i + 1].t : Infinity;
    const a = Math.max(from, ev.t);
    if (b > a && a < to) out.push({ from: a, to: b, stage: ev.stage, label: stageLabel(ev.stage), band: bandOf(ev.stage) });
  });
  return out;
}

export function chartsSection(ctx, farmId, roomId) {
  const { api, live } = ctx;
  const roomUrl = (rest = '') => inFarm(path`/api/rooms/${roomId}` + rest, farmId);
  const charts = new Map();
  const hidden = loadHidden();
  let room = null;
  let range = { key: '24h', from: Date.now() - 86400e3, to: Date.now(), live: true, bucket: '5m' };
  let view = null;         // the zoomed window, or null
  let baseRows = [];       // the range's telemetry rows
  let detailRows = null;   // finer rows of the zoomed window
  let history = null;      // the actuator history answer
  let logbook = [];        // logbook entries (stage ones reaching back before the range)
  let logbookNote = '';
  let hasLogbook = false;
  let livePushes = 0;
  const seenStages = [];   // the room's earlier stages seen while the page is open
  let detailTimer = null;
  let lanesTimer = null;
  let loadSeq = 0;
  let exportBucketTouched = false;

  const heading = h('h2', { id: `charts-${roomId}-h`, text: 'Charts' });
  const rangeButtons = h('div', { class: 'ranges', role: 'group', 'aria-label': 'Range' });
  const fromInput = h('input', { type: 'datetime-local', id: 'charts-from', name: 'from' });
  const toInput = h('input', { type: 'datetime-local', id: 'charts-to', name: 'to' });
  const rangeNote = h('p', { class: 'muted small range-note', role: 'status' });
  const zoomNote = h('span', { class: 'small zoom-note' });
  const zoomIn = h('button', { type: 'button', text: 'Zoom in', dataset: { zoom: 'in' } });
  const zoomOut = h('button', { type: 'button', text: 'Zoom out', dataset: { zoom: 'out' } });
  const earlier = h('button', { type: 'button', text: '← Earlier', 'aria-label': 'Earlier', dataset: { zoom: 'earlier' } });
  const later = h('button', { type: 'button', text: 'Later →', 'aria-label': 'Later', dataset: { zoom: 'later' } });
  const reset = h('button', { type: 'button', text: 'Reset zoom', dataset: { zoom: 'reset' }, disabled: true });
  const picker = h('div', { class: 'metric-picker' });
  const pickerSummary = h('summary', { text: 'Metrics shown' });
  const layoutSelect = h('select', { id: 'charts-layout', name: 'layout' },
    h('option', { value: 'long', text: 'One row per reading' }),
    h('option', { value: 'wide', text: 'One column per metric' }));
  const rowsSelect = h('select', { id: 'charts-rows', name: 'rows' },
    h('option', { value: '', text: 'Every reading' }),
    h('option', { value: '1m', text: '1-minute averages' }),
    h('option', { value: '5m', text: '5-minute averages' }),
    h('option', { value: '1h', text: 'Hourly averages' }),
    h('option', { value: '1d', text: 'Daily averages' }));
  rowsSelect.addEventListener('change', () => { exportBucketTouched = true; });
  const csvButton = h('button', { type: 'button', text: 'Download CSV', dataset: { format: 'csv' } });
  const parquetButton = h('button', { type: 'button', text: 'Download Parquet', dataset: { format: 'parquet' } });
  const exportNote = h('p', { class: 'small export-note', role: 'status' });
  const chartList = h('div', { class: 'chart-list' });

  // The window on screen: the zoomed one, else the range (a live range slides with the clock).
  const shown = () => {
    if (view) return view;
    if (!range.live) return { from: range.from, to: range.to };
    const now = Math.max(Date.now(), range.to);
    return { from: now - (range.to - range.from), to: now };
  };

  // Chart data, column-wise (GET …/series): [{t (ms), device_id, metric, value, min, max}].
  async function fetchSeries(from, to, bucket) {
    const answer = await api.get(roomUrl(path`/series?from=${iso(from)}&to=${iso(to)}&bucket=${bucket}`));
    const rows = [];
    for (const s of answer.series) {
      for (let i = 0; i < s.t.length; i += 1) {
        rows.push({ t: s.t[i] * 1000, device_id: s.device_id, metric: s.metric, value: s.avg[i],
          min: s.min[i], max: s.max[i] });
      }
    }
    return rows;
  }

  function orderedMetrics(rows) {
    const present = new Set(BANDED);
    for (const row of rows) present.add(row.metric);
    if (room && room.latest) for (const m of Object.keys(room.latest)) present.add(m);
    const known = Object.keys(METRICS);
    return [...present].sort((a, b) => {
      const ia = known.indexOf(a);
      const ib = known.indexOf(b);
      return (ia < 0 ? 999 : ia) - (ib < 0 ? 999 : ib) || a.localeCompare(b);
    });
  }

  function chartFor(metric) {
    if (!charts.has(metric)) {
      charts.set(metric, new LineChart(metric, { onView: setView, onCursor: shareCursor }));
    }
    return charts.get(metric);
  }

  // One chart's crosshair is echoed on the others: the same moment across every metric.
  function shareCursor(source, t) {
    for (const [metric, chart] of charts) {
      if (chart !== source && !hidden.has(metric)) chart.echo(t);
    }
  }

  function renderPicker(metrics) {
    const on = metrics.filter((m) => !hidden.has(m)).length;
    pickerSummary.textContent = `Metrics shown (${on} of ${metrics.length})`;
    clear(picker, h('fieldset', {},
      h('legend', { text: 'Metrics shown' }),
      metrics.map((metric) => {
        const id = `charts-show-${metric}`;
        const box = h('input', { type: 'checkbox', id, name: 'metric', value: metric, checked: !hidden.has(metric) });
        box.addEventListener('change', () => {
          if (box.checked) hidden.delete(metric);
          else hidden.add(metric);
          try { localStorage.setItem(HIDDEN_KEY, JSON.stringify([...hidden])); } catch (err) { /* private mode */ }
          layout();
        });
        return h('label', { for: id, class: 'check' }, box, ` ${metricInfo(metric).label}`);
      })));
  }

  function lanes() {
    if (!history) return [];
    const end = range.live ? Infinity : range.to;
    return history.actuators.map((a) => ({
      id: a.device_id,
      label: a.name && a.name !== a.device_id ? a.name : actuatorLabel(a.role),
      known: a.known_from ? ms(a.known_from) : Infinity,
      intervals: a.intervals.map((i) => [ms(i.start), i.ongoing ? end : ms(i.end)]),
    }));
  }

  function markers() {
    return logbook
      .filter((e) => ms(e.at) >= range.from)
      .map((e) => {
        let title = e.title || e.text || '';
        if (e.kind === 'stage' && e.stage) title = title || stageLabel(e.stage);
        if (e.kind === 'harvest' && e.weight_kg !== null && e.weight_kg !== undefined) {
          title = `${title ? `${title} · ` : ''}${e.weight_kg} kg`;
        }
        return { t: ms(e.at), kind: e.kind, label: KIND_LABELS[e.kind] || e.kind, title };
      });
  }

  function rowsFor(metric) {
    let rows = baseRows;
    if (view && detailRows) {
      rows = baseRows.filter((r) => r.t < view.from || r.t > view.to)
        .concat(detailRows);
    }
    return rows.filter((row) => row.metric === metric);
  }

  function layout() {
    const metrics = orderedMetrics(baseRows);
    renderPicker(metrics);
    const names = new Map(Object.entries((history && history.device_names) || {}));
    // A live range keeps its length as the clock moves on.
    const to = range.live ? Math.max(Date.now(), range.to) : range.to;
    const from = range.live ? to - (range.to - range.from) : range.from;
    const laneList = lanes();
    const markerList = markers();
    const els = [];
    for (const metric of metrics) {
      if (hidden.has(metric)) continue;
      const chart = chartFor(metric);
      chart.setRange(from, to, range.live);
      chart.setView(view);
      chart.setNames(names);
      chart.setBand(room && room.bands ? room.bands[metric] : null);
      chart.setStages(stageSegments(room, [...logbook, ...seenStages], from, to, metric,
        history && history.bands_by_stage));
      chart.setLanes(laneList);
      chart.setMarkers(markerList);
      chart.setData(rowsFor(metric));
      els.push(chart.el);
    }
    for (const [metric, chart] of charts) {
      if (!metrics.includes(metric) || hidden.has(metric)) chart.el.remove();
    }
    clear(chartList, els.length ? els : h('p', { class: 'muted', text: 'No metric selected: tick one above.' }));
    updateNotes();
  }

  function updateNotes() {
    const win = shown();
    const bucket = view ? bucketFor(win.to - win.from) : range.bucket;
    const what = `${BUCKET_WORDS[bucket]} averages`;
    rangeNote.textContent = range.live && !view
      ? `Live · ${RANGES.find((r) => r.key === range.key)?.label || ''} · ${what}, then every new reading${logbookNote}`
      : `${moment(win.from)} – ${moment(win.to)} · ${what}${logbookNote}`;
    zoomNote.textContent = view ? `Zoomed: ${moment(view.from)} – ${moment(view.to)}` : '';
    reset.disabled = !view;
    if (!exportBucketTouched) rowsSelect.value = win.to - win.from <= 2 * 86400e3 + 60e3 ? '' : '1h';
    for (const button of rangeButtons.querySelectorAll('button')) {
      button.setAttribute('aria-pressed', String(button.dataset.range === range.key));
    }
  }

  async function fetchLogbook(from, to) {
    try {
      // Every page (a long lookback may hold more entries than one page).
      const items = await api.all(roomUrl(path`/logbook?from=${iso(from - STAGE_LOOKBACK)}&to=${iso(to)}`), 10);
      logbookNote = '';
      return items.filter((e) => e && e.at && e.kind);
    } catch (err) {
      // No logbook on this server yet (404): charts without markers.
      logbookNote = err.status === 404 ? '' : ' · logbook unavailable';
      return [];
    }
  }

  async function fetchHistory(from, to) {
    try {
      return await api.get(roomUrl(path`/actuators/history?from=${iso(from)}&to=${iso(to)}`));
    } catch (err) {
      if (err.status === 401) throw err;
      return null;
    }
  }

  async function loadCharts() {
    const seq = (loadSeq += 1);
    rangeNote.textContent = 'Loading…';
    el.dataset.loading = 'true';
    el.setAttribute('aria-busy', 'true');
    const to = range.live ? Date.now() + 60e3 : range.to;
    // The logbook is asked for only where the cloud has it (the history answer says so; known
    // after the first load, then fetched alongside).
    const [answer, hist, early] = await Promise.all([
      fetchSeries(range.from, to, range.bucket),
      fetchHistory(range.from, range.live ? Date.now() : range.to),
      hasLogbook ? fetchLogbook(range.from, to) : null,
    ]);
    if (hist) hasLogbook = Boolean(hist.logbook);
    const book = early || (hasLogbook ? await fetchLogbook(range.from, to) : []);
    if (seq !== loadSeq) return;
    el.dataset.loading = 'false';
    el.removeAttribute('aria-busy');
    baseRows = answer;
    detailRows = null;
    history = hist;
    logbook = book;
    layout();
    if (view) scheduleDetail();
  }

  function reload() {
    loadCharts().catch((err) => {
      rangeNote.textContent = `Could not load: ${err.message}`;
      el.dataset.loading = 'false';
      el.removeAttribute('aria-busy');
    });
  }

  // Finer data for the zoomed window, a moment after the last zoom or pan.
  function scheduleDetail() {
    clearTimeout(detailTimer);
    if (!view) return;
    detailTimer = setTimeout(async () => {
      const win = view;
      if (!win) return;
      const bucket = bucketFor(win.to - win.from);
      if (bucket === range.bucket) return;
      try {
        const answer = await fetchSeries(win.from, win.to, bucket);
        if (view !== win) return;
        detailRows = answer;
        for (const [metric, chart] of charts) {
          if (!hidden.has(metric)) chart.setData(rowsFor(metric));
        }
        updateNotes();
      } catch (err) {
        rangeNote.textContent = `Could not load the zoomed data: ${err.message}`;
      }
    }, 250);
  }

  function setView(next) {
    view = next;
    detailRows = null;
    for (const [metric, chart] of charts) {
      if (hidden.has(metric)) continue;
      chart.setView(view);
      chart.setData(rowsFor(metric));
    }
    updateNotes();
    scheduleDetail();
  }

  // Zoom and pan from the toolbar, on every chart at once (through the first chart's geometry).
  function firstChart() {
    for (const [metric, chart] of charts) if (!hidden.has(metric)) return chart;
    return null;
  }
  zoomIn.addEventListener('click', () => firstChart()?.zoom(0.5));
  zoomOut.addEventListener('click', () => firstChart()?.zoom(2));
  // Earlier / later by half the window: inside the loaded range a pan, past its ends a new range
  // of the same length (history before a preset's start, or back towards now).
  function step(dir) {
    const win = shown();
    const span = win.to - win.from;
    let from = win.from + dir * span / 2;
    let to = from + span;
    const now = Date.now();
    if (to > now) { to = now; from = now - span; }
    const loadedTo = range.live ? now : range.to;
    const loadedFrom = range.live ? now - (range.to - range.from) : range.from;
    if (view && from >= loadedFrom && to <= loadedTo) {
      firstChart()?.pan(dir * 0.5);
      return;
    }
    if (Math.abs(from - win.from) < 1000) return;  // already at now
    range = { key: 'custom', from, to, live: false, bucket: bucketFor(span) };
    view = null;
    fromInput.value = localInput(from);
    toInput.value = localInput(to);
    reload();
  }
  earlier.addEventListener('click', () => step(-1));
  later.addEventListener('click', () => step(1));
  reset.addEventListener('click', () => setView(null));

  function pick(key) {
    const preset = RANGES.find((r) => r.key === key);
    range = { key, from: Date.now() - preset.ms, to: Date.now(), live: true, bucket: preset.bucket };
    view = null;
    reload();
  }

  clear(rangeButtons, RANGES.map((r) => h('button', {
    type: 'button', text: r.label, dataset: { range: r.key }, onclick: () => pick(r.key),
  })));
  fromInput.value = localInput(Date.now() - 7 * 86400e3);
  const customForm = h('form', { class: 'inline custom-range' },
    h('label', { for: 'charts-from', text: 'From' }), fromInput,
    h('label', { for: 'charts-to', text: 'To' }), toInput,
    h('button', { type: 'submit', text: 'Show' }));
  customForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const from = new Date(fromInput.value).getTime();
    const to = toInput.value ? new Date(toInput.value).getTime() : Date.now();
    if (!(from < to)) {
      rangeNote.textContent = 'Pick a start before the end.';
      return;
    }
    range = { key: 'custom', from, to, live: false, bucket: bucketFor(to - from) };
    view = null;
    reload();
  });

  async function download(format) {
    const win = shown();
    const metrics = orderedMetrics(baseRows).filter((m) => !hidden.has(m));
    let url = roomUrl(path`/export?from=${iso(win.from)}&to=${iso(range.live && !view ? Date.now() + 60e3 : win.to)}&format=${format}&layout=${layoutSelect.value}`);
    if (rowsSelect.value) url += path`&bucket=${rowsSelect.value}`;
    for (const metric of metrics) url += path`&metric=${metric}`;
    const accept = format === 'csv' ? 'text/csv' : 'application/vnd.apache.parquet';
    for (const b of [csvButton, parquetButton]) b.disabled = true;
    exportNote.textContent = `Preparing the ${format === 'csv' ? 'CSV' : 'Parquet'} file…`;
    try {
      const blob = await api.blob(url, accept);
      const href = URL.createObjectURL(blob);
      const stamp = iso(win.from).slice(0, 16).replace(':', '');
      const name = `${farmId}-${roomId}-${stamp}-${view ? 'zoom' : range.key}-${layoutSelect.value}.${format}`;
      const link = h('a', { href, download: name });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(href), 10000);
      exportNote.textContent = `Downloaded ${name} (${Math.max(1, Math.round(blob.size / 1024))} KB).`;
    } catch (err) {
      exportNote.textContent = `The download failed: ${err.message}`;
    } finally {
      for (const b of [csvButton, parquetButton]) b.disabled = false;
    }
  }
  csvButton.addEventListener('click', () => download('csv'));
  parquetButton.addEventListener('click', () => download('parquet'));

  // Actuator lanes follow commands and status reports (debounced).
  function refreshLanes() {
    clearTimeout(lanesTimer);
    lanesTimer = setTimeout(async () => {
      if (live && live.state !== 'live') return;  // the cloud is away: the resync reloads all
      const hist = await fetchHistory(range.from, range.live ? Date.now() : range.to);
      if (!hist) return;
      history = hist;
      const laneList = lanes();
      for (const chart of charts.values()) {
        chart.setLanes(laneList);
        chart.render();
      }
    }, 1500);
  }
  const here = (msg) => msg && msg.farm_id === farmId && msg.room_id === roomId;
  const onCommand = (event) => {
    const cmd = event.detail && event.detail.command;
    if (here(event.detail) && range.live && cmd && ['acked', 'failed'].includes(cmd.status)) refreshLanes();
  };
  const onStatus = (event) => { if (here(event.detail) && range.live) refreshLanes(); };
  if (live) {
    live.addEventListener('command', onCommand);
    live.addEventListener('status', onStatus);
  }

  const el = h('section', { class: 'card charts', 'aria-labelledby': heading.id },
    h('div', { class: 'charts-head' }, heading, rangeButtons),
    h('div', { class: 'row wrap charts-tools' }, customForm),
    h('div', { class: 'row wrap charts-zoom', role: 'group', 'aria-label': 'Zoom' },
      zoomIn, zoomOut, earlier, later, reset, zoomNote),
    rangeNote,
    h('details', { class: 'charts-options' }, pickerSummary, picker),
    h('div', { class: 'row wrap export', role: 'group', 'aria-label': 'Download' },
      h('span', { class: 'field' }, h('label', { for: 'charts-layout', text: 'Layout' }), layoutSelect),
      h('span', { class: 'field' }, h('label', { for: 'charts-rows', text: 'Rows' }), rowsSelect),
      csvButton, parquetButton),
    h('p', { class: 'small muted', text: 'Downloads hold the shown window and the shown metrics; times are UTC, ISO 8601.' }),
    exportNote,
    h('p', { class: 'small muted chart-help', text: 'Drag across a chart to zoom, shift+drag or the buttons to pan; double-click resets. On a phone, touch a chart for its values and pinch to zoom.' }),
    chartList);

  return {
    el,
    load: loadCharts,
    // The room changed (stage, bands, latest values).
    setRoom(next) {
      // A stage change seen here also tells which stage held before it (whatever the logbook has).
      if (room && next && room.stage_started !== next.stage_started) {
        seenStages.push({ kind: 'stage', stage: room.stage, at: room.stage_started });
      }
      room = next;
      layout();
    },
    // A live reading from one of the room's devices.
    reading(msg) {
      let added = false;
      for (const [metric, value] of Object.entries(msg.values)) {
        const chart = charts.get(metric);
        if (chart && !hidden.has(metric)) chart.add(msg.device_id, msg.time * 1000, value);
        if (range.live) {
          baseRows.push({ t: msg.time * 1000, device_id: msg.device_id, metric, value });
          livePushes += 1;
          if (!charts.has(metric) && !hidden.has(metric)) added = true;
        }
      }
      if (livePushes > 5000) {
        // A page left open for days: drop what has slid out of the live window.
        livePushes = 0;
        const oldest = shown().from;
        baseRows = baseRows.filter((r) => r.t >= oldest);
      }
      if (added) layout();
    },
    dispose() {
      clearTimeout(detailTimer);
      clearTimeout(lanesTimer);
      if (live) {
        live.removeEventListener('command', onCommand);
        live.removeEventListener('status', onStatus);
      }
      for (const chart of charts.values()) chart.dispose();
    },
  };
}
