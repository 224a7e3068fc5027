// One room: its values against the stage's bands, live charts (last 24 h by default; a range
// picker reads history from the bucketed telemetry API), devices with a control per actuator
// that shows the command's life (pending → delivered → acked/failed), the stage, the rules,
// alerts and recommendations, and a CSV download of the shown range.

import { inFarm, path } from './api.js';
import { chartsSection } from './room-charts.js';
import { h, clear, BANDED, STAGES, METRICS, formatValue, metricInfo, inBand, bandText, clock,
  speciesLabel, stageLabel } from './dom.js';
import { alertsPanel, recommendationsPanel } from './panels.js';
import { deviceRow } from './room-devices.js';
import { logbookSection } from './room-logbook.js';
import { auditSection } from './room-audit.js';
import { rulesSection } from './view-rules.js';


function nowCard(metric, band, value) {
  const info = metricInfo(metric);
  const dd = h('dd', { class: 'value' });
  // The target belongs to the term (a <dl> holds only dt/dd groups: nothing else in its div).
  const note = h('span', { class: 'note' });
  const el = h('div', { class: 'metric', dataset: { metric } },
    h('dt', {}, h('span', { class: 'term', text: info.label }), note), dd);
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
  const deviceList = h('ul', { class: 'items devices' });
  const rows = new Map();
  let cards = new Map();
  const alerts = alertsPanel(ctx, farmId, roomId);
  const recs = recommendationsPanel(ctx, farmId, roomId, canOperate);
  const rules = rulesSection(ctx, farmId, roomId, snap.devices, canOperate);
  const charts = chartsSection(ctx, farmId, roomId);
  const logbook = logbookSection(ctx, farmId, roomId, canOperate);
  const audit = auditSection(ctx, farmId, roomId);

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
  }

  function renderDevices() {
    rows.clear();
    clear(deviceList, snap.devices.map((device) => {
      const row = deviceRow(ctx, farmId, roomId, device, canOperate);
      rows.set(device.id, row);
      return row.el;
    }));
  }

  stageForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    stageMsg.textContent = '';
    try {
      await api.request('PATCH', roomUrl(), { stage: stageSelect.value });
      snap = await api.get(roomUrl('/live'));
      renderRoom();
      charts.setRoom(snap.room);
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
    charts.el,
    h('div', { class: 'grid two' },
      h('section', { class: 'card panel', 'aria-label': 'devices' }, h('h2', { text: 'Devices' }), deviceList),
      h('div', { class: 'stack' }, alerts.el, recs.el)),
    rules.el,
    logbook.el,
    audit.el);
  charts.setRoom(snap.room);
  const loadAll = () => Promise.all([charts.load(), alerts.load(), recs.load(), rules.load(),
    logbook.load(), audit.load()]);

  // Another farm may have a room of this id: a message is about this room if both match.
  const here = (msg) => msg.farm_id === farmId && msg.room_id === roomId;
  const handlers = {
    reading: (event) => {
      const msg = event.detail;
      if (!here(msg)) return;
      for (const [metric, value] of Object.entries(msg.values)) {
        const card = cards.get(metric);
        if (card) card.set(value, msg.time);
      }
      charts.reading(msg);
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
      charts.setRoom(snap.room);
    },
    resync: async () => {
      snap = await api.get(roomUrl('/live'));
      renderRoom();
      renderDevices();
      await loadAll();
    },
  };
  // The room listens before its panels load: the devices' controls work from the moment they
  // show, and the answer to a switch made then (a slow link, a quick grower) must not be missed.
  const stopListening = live.listen(handlers);
  live.subscribe({ farm_id: farmId, room_id: roomId });
  try {
    await loadAll();
  } catch (err) {
    stopListening();
    throw err;
  }
  const ticker = setInterval(() => { for (const row of rows.values()) row.refresh(); }, 15000);
  return () => {
    clearInterval(ticker);
    stopListening();
    charts.dispose();
    logbook.dispose();
    audit.dispose();
    alerts.dispose();
    recs.dispose();
    rules.dispose();
  };
}
