// One room: its values against the stage's bands, live charts (last 24 h by default; a range
// picker reads history from the bucketed telemetry API), devices with a control per actuator
// that shows the command's life (pending → delivered → acked/failed), the stage, the rules,
// alerts and recommendations, and a CSV download of the shown range.

import { inFarm, path } from './api.js';
import { LineChart } from './chart.js';
import { h, clear, BANDED, STAGES, METRICS, formatValue, metricInfo, inBand, bandText, words, ago,
  clock, actuatorLabel, NODE_METRICS, speciesLabel, stageLabel } from './dom.js';
import { alertsPanel, recommendationsPanel } from './panels.js';
import { rulesSection } from './view-rules.js';

const RANGES = [
  { key: '1h', label: '1 h', ms: 3600e3, bucket: '1m' },
  { key: '6h', label: '6 h', ms: 6 * 3600e3, bucket: '1m' },
  { key: '24h', label: '24 h', ms: 86400e3, bucket: '5m' },
  { key: '7d', label: '7 d', ms: 7 * 86400e3, bucket: '1h' },
  { key: '30d', label: '30 d', ms: 30 * 86400e3, bucket: '1h' },
];
const FINAL = ['acked', 'failed', 'timed_out', 'expired'];

function deviceRow(ctx, farmId, roomId, device, canOperate) {
  const label = device.actuator ? actuatorLabel(device.actuator) : 'sensor';
  const dot = h('span', { class: 'dot' });
  const state = h('span', { class: 'state' });
  const seen = h('span', { class: 'muted small' });
  const life = h('ol', { class: 'life', 'aria-label': `${label} command`, 'aria-live': 'polite' });
  const error = h('p', { class: 'error small', role: 'alert', hidden: true });
  const commands = new Map();  // id → {action, steps: [status…], created}
  let current = null;
  let info = { ...device };

  async function send(action) {
    error.hidden = true;
    try {
      const url = inFarm(path`/api/rooms/${roomId}/commands`, farmId);
      const made = await ctx.api.request('POST', url, { device_id: device.id, action });
      command(made);
    } catch (err) {
      error.textContent = `${label} ${action}: ${err.message}`;
      error.hidden = false;
    }
  }

  const controls = device.kind === 'actuator' && canOperate
    ? h('div', { class: 'actions' },
      ['on', 'off'].map((action) => h('button', {
        type: 'button', text: `${action === 'on' ? 'On' : 'Off'}`, 'aria-label': `${label} ${action}`,
        dataset: { action }, onclick: () => send(action),
      })))
    : null;

  const el = h('li', { class: 'device', dataset: { device: device.id, kind: device.kind } },
    h('div', { class: 'row' },
      h('span', {}, dot, h('strong', { text: device.name || device.id }),
        h('span', { class: 'muted small', text: ` ${label}` })),
      state),
    h('div', { class: 'row' }, seen, controls),
    life, error);

  function renderState() {
    dot.className = `dot ${info.online === true ? 'on' : info.online === false ? 'off' : ''}`;
    const st = info.state || {};
    let text = info.online === false ? 'offline' : '';
    if (device.kind === 'actuator' && 'on' in st) {
      text = `${st.on ? 'ON' : 'off'}${st.level !== undefined && st.on && st.level < 100 ? ` ${st.level}%` : ''}`;
    } else if (device.kind === 'sensor' && info.latest && NODE_METRICS.some((m) => info.latest[m])) {
      text = NODE_METRICS.filter((m) => info.latest[m])
        .map((m) => `${metricInfo(m).label.toLowerCase()} ${formatValue(m, info.latest[m].value)}`).join(' · ');
    }
    state.textContent = text;
    el.dataset.on = st.on === true ? 'true' : 'false';
    seen.textContent = `seen ${ago(info.last_seen || info.status_at)}`;
  }

  function renderLife() {
    if (!current) {
      clear(life);
      delete life.dataset.status;
      return;
    }
    const cmd = commands.get(current);
    life.dataset.status = cmd.steps[cmd.steps.length - 1];
    life.dataset.command = current;
    clear(life, h('li', { class: 'what', text: `${label} ${cmd.action}` }),
      cmd.steps.map((step) => h('li', { class: `step ${step}`, text: words(step) })),
      cmd.error ? h('li', { class: 'error small', text: cmd.error }) : null);
  }

  // A command event or answer: each state it passes through is shown once, in order.
  function command(cmd) {
    if (cmd.device_id && cmd.device_id !== device.id) return;
    let entry = commands.get(cmd.id);
    if (!entry) {
      entry = { action: cmd.action, steps: [], created: new Date(cmd.created_at).getTime(), error: null };
      commands.set(cmd.id, entry);
    }
    if (!entry.steps.includes(cmd.status)) {
      const done = entry.steps.some((step) => FINAL.includes(step));
      if (!done) entry.steps.push(cmd.status);
    }
    entry.error = cmd.error || entry.error;
    const cur = current ? commands.get(current) : null;
    if (!cur || entry.created >= cur.created) current = cmd.id;
    renderLife();
  }

  function status(msg) {
    info = { ...info, online: msg.online, state: msg.state, status_at: msg.time };
    renderState();
  }

  function reading(msg) {
    info.last_seen = new Date(msg.time * 1000).toISOString();
    info.latest = { ...(info.latest || {}) };
    for (const [metric, value] of Object.entries(msg.values)) {
      info.latest[metric] = { value, time: info.last_seen };
    }
    renderState();
  }

  renderState();
  if (device.last_command) command({ ...device.last_command, device_id: device.id });
  return { el, command, status, reading, refresh: renderState };
}

function nowCard(metric, band, value) {
  const info = metricInfo(metric);
  const dd = h('dd', { class: 'value' });
  const note = h('span', { class: 'muted small' });
  const el = h('div', { class: 'metric', dataset: { metric } }, h('dt', { text: info.label }), dd, note);
  function set(v, time) {
    value = v === undefined ? value : { value: v, time };
    dd.textContent = value ? formatValue(metric, value.value) : '–';
    const ok = value && band ? inBand(band, value.value) : null;
    el.dataset.band = ok === null ? 'unknown' : (ok ? 'in' : 'out');
    note.textContent = band ? `target ${bandText(metric, band)}` : '';
  }
  set();
  return { el, set };
}

export async function roomView(ctx, farmId, roomId) {
  const { api, live, main, setCrumbs } = ctx;
  if (!farmId) {
    // An old #/room/{id} link names no farm: the room's, or the farm list when several of the
    // user's farms have a room of this id (the API's 409).
    try {
      const found = await api.get(path`/api/rooms/${roomId}`);
      location.replace(`#/farm/${encodeURIComponent(found.farm_id)}/room/${encodeURIComponent(roomId)}`);
    } catch (err) {
      if (err.status !== 409) throw err;
      location.replace('#/');
    }
    return null;
  }
  // Every call about this room (or its devices, rules, commands) names its farm.
  const roomUrl = (rest = '') => inFarm(path`/api/rooms/${roomId}` + rest, farmId);
  const [farm, first] = await Promise.all([
    api.get(path`/api/farms/${farmId}`),
    api.get(roomUrl('/live')),
  ]);
  let snap = first;
  const canOperate = snap.role === 'operator' || snap.role === 'owner';
  setCrumbs({ label: 'Farms', href: '#/' },
    { label: farm.name || farmId, href: `#/farm/${encodeURIComponent(farmId)}` },
    { label: snap.room.name || roomId });

  const title = h('h1', { text: snap.room.name || roomId });
  const subtitle = h('p', { class: 'muted' });
  const stageSelect = h('select', { id: 'stage', name: 'stage', 'aria-label': 'stage' },
    STAGES.map((st) => h('option', { value: st, text: stageLabel(st) })));
  const stageMsg = h('span', { class: 'small', role: 'status' });
  const stageForm = h('form', { class: 'inline', hidden: !canOperate },
    h('label', { for: 'stage', text: 'Stage ' }), stageSelect,
    h('button', { type: 'submit', text: 'Change stage' }), stageMsg);
  const nowGrid = h('dl', { class: 'grid now-cards' });
  const charts = new Map(BANDED.map((metric) => [metric, new LineChart(metric)]));
  const rangeButtons = h('div', { class: 'ranges', role: 'group', 'aria-label': 'range' });
  const fromInput = h('input', { type: 'datetime-local', 'aria-label': 'from' });
  const toInput = h('input', { type: 'datetime-local', 'aria-label': 'to' });
  const rangeNote = h('span', { class: 'muted small' });
  const csvButton = h('button', { type: 'button', text: 'Download CSV', title: 'the shown range as CSV' });
  const deviceList = h('ul', { class: 'items devices' });
  const rows = new Map();
  let cards = new Map();
  let range = { key: '24h', from: Date.now() - 86400e3, to: Date.now(), live: true, bucket: '5m' };
  const alerts = alertsPanel(ctx, farmId, roomId);
  const recs = recommendationsPanel(ctx, farmId, roomId, canOperate);
  const rules = rulesSection(ctx, farmId, roomId, snap.devices, canOperate);

  function renderRoom() {
    const room = snap.room;
    title.textContent = room.name || roomId;
    clear(subtitle, `${speciesLabel(room.species)} · `, h('span', { class: 'stage', text: stageLabel(room.stage) }),
      ` since ${clock(room.stage_started)}`);
    stageSelect.value = room.stage;
    cards = new Map();
    const metrics = [...BANDED, ...Object.keys(room.latest).filter((m) => !BANDED.includes(m) && METRICS[m])];
    clear(nowGrid, metrics.map((metric) => {
      const card = nowCard(metric, room.bands[metric], room.latest[metric]);
      cards.set(metric, card);
      return card.el;
    }));
    for (const [metric, chart] of charts) chart.setBand(room.bands[metric]);
  }

  function renderDevices() {
    rows.clear();
    clear(deviceList, snap.devices.map((device) => {
      const row = deviceRow(ctx, farmId, roomId, device, canOperate);
      rows.set(device.id, row);
      return row.el;
    }));
  }

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

  stageForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    stageMsg.textContent = '';
    try {
      await api.request('PATCH', roomUrl(), { stage: stageSelect.value });
      snap = await api.get(roomUrl('/live'));
      renderRoom();
      for (const chart of charts.values()) chart.render();
      stageMsg.textContent = 'Stage changed; the edge applies it within seconds.';
    } catch (err) {
      stageMsg.textContent = `Could not change the stage: ${err.message}`;
    }
  });

  renderRoom();
  renderDevices();
  clear(main,
    h('div', { class: 'room-head' }, h('div', {}, title, subtitle), stageForm),
    nowGrid,
    h('section', { class: 'card charts', 'aria-label': 'charts' },
      h('div', { class: 'row wrap' }, rangeButtons, customForm, csvButton),
      rangeNote,
      h('div', { class: 'chart-list' }, [...charts.values()].map((c) => c.el))),
    h('div', { class: 'grid two' },
      h('section', { class: 'card panel', 'aria-label': 'devices' }, h('h2', { text: 'Devices' }), deviceList),
      h('div', { class: 'stack' }, alerts.el, recs.el)),
    rules.el);
  await Promise.all([loadCharts(), alerts.load(), recs.load(), rules.load()]);

  // Another farm may have a room of this id: a message is about this room if both match.
  const here = (msg) => msg.farm_id === farmId && msg.room_id === roomId;
  const handlers = {
    reading: (event) => {
      const msg = event.detail;
      if (!here(msg)) return;
      for (const [metric, value] of Object.entries(msg.values)) {
        const card = cards.get(metric);
        if (card) card.set(value, msg.time);
        const chart = charts.get(metric);
        if (chart) chart.add(msg.device_id, msg.time * 1000, value);
      }
      const row = rows.get(msg.device_id);
      if (row) row.reading(msg);
    },
    status: (event) => {
      const row = rows.get(event.detail.device_id);
      if (here(event.detail) && row) row.status(event.detail);
    },
    command: (event) => {
      const { command } = event.detail;
      const row = rows.get(command.device_id);
      if (here(event.detail) && row) row.command(command);
    },
    room: async (event) => {
      // Renamed or a new stage (by anyone, or on the edge): new name and bands.
      if (!here(event.detail)) return;
      snap = await api.get(roomUrl('/live'));
      renderRoom();
      for (const chart of charts.values()) chart.render();
    },
    resync: async () => {
      snap = await api.get(roomUrl('/live'));
      renderRoom();
      renderDevices();
      await Promise.all([loadCharts(), alerts.load(), recs.load(), rules.load()]);
    },
  };
  for (const [type, handler] of Object.entries(handlers)) live.addEventListener(type, handler);
  live.subscribe({ farm_id: farmId, room_id: roomId });
  const ticker = setInterval(() => { for (const row of rows.values()) row.refresh(); }, 15000);
  return () => {
    clearInterval(ticker);
    for (const [type, handler] of Object.entries(handlers)) live.removeEventListener(type, handler);
    for (const chart of charts.values()) chart.dispose();
    alerts.dispose();
    recs.dispose();
    rules.dispose();
  };
}
