// Your farms, and one farm at a glance: each room's newest temperature, RH and CO₂ against the
// stage's band, the edges' health (online, rooms served, upload backlog, software version, clock
// offset) and the active alerts — all kept live.

import { path } from './api.js';
import { h, clear, BANDED, formatValue, metricInfo, inBand, bandText, ago, speciesLabel, stageLabel } from './dom.js';
import { alertsPanel } from './panels.js';
import { field, select, showErrors, errorLine, busy, timezones, browserZone } from './setup-forms.js';

const ROLE_NAMES = { owner: 'owner', operator: 'operator', viewer: 'viewer' };

// #/ lists the farms (a single farm opens by itself); #/farms always shows the list and the
// "New farm" form.
export async function farmsView({ api, main, setCrumbs }) {
  setCrumbs({ label: 'Farms' });
  const farms = await api.all('/api/farms?limit=100', 5);
  const explicit = location.hash.startsWith('#/farms');
  if (farms.length === 1 && !explicit) {
    location.replace(`#/farm/${encodeURIComponent(farms[0].id)}`);
    return null;
  }
  clear(main,
    h('section', { class: 'card' },
      h('h1', { text: 'Your farms' }),
      farms.length
        ? h('ul', { class: 'items' }, farms.map((f) => h('li', {},
          h('a', { href: `#/farm/${encodeURIComponent(f.id)}`, text: f.name || f.id }),
          h('span', { class: 'muted small', text: ` · you are ${ROLE_NAMES[f.role] || 'a member'}` }))))
        : h('p', { class: 'muted', text: 'You are not a member of any farm yet: create one below, or ask a farm owner for an invitation.' })),
    newFarmForm(api),
    h('p', {}, h('a', { href: '#/account', text: 'Your account and notifications' })));
  return null;
}

function newFarmForm(api) {
  const zone = browserZone();
  const name = field('Farm name', h('input', { type: 'text', maxlength: '100', required: true, autocomplete: 'off' }), { name: 'name' });
  const tz = field('Time zone', select(timezones(zone), zone), { name: 'timezone', hint: 'schedules and the day count of grow stages follow it' });
  const general = errorLine();
  const create = h('button', { type: 'submit', class: 'primary', text: 'Create farm' });
  const form = h('form', { class: 'card setup-form', 'aria-labelledby': 'new-farm-h' },
    h('h2', { id: 'new-farm-h', text: 'New farm' }), name.el, tz.el, general,
    h('div', { class: 'actions' }, create));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    await busy(create, async () => {
      try {
        const farm = await api.request('POST', '/api/farms', { name: name.input.value.trim(), timezone: tz.input.value });
        location.hash = `#/farm/${encodeURIComponent(farm.id)}/setup/rooms`;
      } catch (err) {
        showErrors([name, tz], general, err);
      }
    });
  });
  return form;
}

function roomCard(farmId, room) {
  const metrics = new Map();
  const status = h('span', { class: 'state' });
  const stage = h('span', { class: 'stage', text: stageLabel(room.stage) });
  const href = `#/farm/${encodeURIComponent(farmId)}/room/${encodeURIComponent(room.id)}`;
  const el = h('a', { class: 'card room', href, dataset: { room: room.id, farm: farmId } },
    h('div', { class: 'row' }, h('h2', { text: room.name || room.id }), status),
    h('p', { class: 'muted small' }, `${speciesLabel(room.species)} · `, stage),
    h('dl', { class: 'now' }, BANDED.map((metric) => {
      const dd = h('dd', { text: '–' });
      metrics.set(metric, dd);
      return [h('dt', { text: metricInfo(metric).label }), dd];
    })));
  const latest = { ...room.latest };

  function render() {
    const off = [];
    let judged = 0;
    for (const [metric, dd] of metrics) {
      const now = latest[metric];
      const band = room.bands[metric];
      dd.textContent = now ? formatValue(metric, now.value) : '–';
      dd.title = band ? `target ${bandText(metric, band)}` : '';
      const stale = now ? Date.now() - new Date(now.time).getTime() > 600000 : true;
      const ok = now && !stale ? inBand(band, now.value) : null;
      dd.dataset.band = ok === null ? 'unknown' : (ok ? 'in' : 'out');
      if (ok !== null) judged += 1;
      if (ok === false) off.push(metricInfo(metric).label);
    }
    el.dataset.band = judged ? (off.length ? 'out' : 'in') : 'unknown';
    status.textContent = judged ? (off.length ? `out of band: ${off.join(', ')}` : 'in band') : 'no recent data';
  }

  function reading(msg) {
    const t = msg.time * 1000;
    for (const [metric, value] of Object.entries(msg.values)) {
      const old = latest[metric];
      if (!old || new Date(old.time).getTime() <= t) {
        latest[metric] = { value, time: new Date(t).toISOString(), device_id: msg.device_id };
      }
    }
    render();
  }

  render();
  return { el, reading, refresh: render };
}

// A clock this far off shifts the edge's timestamps (the cloud corrects them past 5 min).
const CLOCK_WARN_S = 60;

function offsetText(seconds) {
  const abs = Math.abs(seconds);
  const size = abs < 90 ? `${abs.toFixed(abs < 10 ? 1 : 0)} s` : (abs < 5400 ? `${Math.round(abs / 60)} min` : `${Math.round(abs / 3600)} h`);
  if (abs < 0.5) return 'in step';
  return `${size} ${seconds > 0 ? 'behind' : 'ahead'}`;
}

// One edge's health: the rooms it serves, its upload backlog and software version (as it last
// reported them), and how far its clock is from the cloud's (measured on its last batch).
function edgeHealth(edge, roomNames) {
  const rooms = edge.rooms || [];
  const backlog = edge.backlog;
  const offset = edge.clock_offset_s;
  const items = [
    ['Rooms', rooms.length ? rooms.map((id) => roomNames.get(id) || id).join(', ') : 'none', null],
    ['Backlog', backlog === null || backlog === undefined ? 'not reported'
      : `${backlog.toLocaleString()} record${backlog === 1 ? '' : 's'} to upload`, backlog > 1000 ? 'out' : null],
    ['Version', edge.software_version || 'not reported', null],
    ['Clock', offset === null || offset === undefined ? 'not measured' : offsetText(offset),
      offset !== null && offset !== undefined && Math.abs(offset) > CLOCK_WARN_S ? 'out' : null],
  ];
  return h('dl', { class: 'now edge-health small', dataset: { edgeHealth: edge.id } },
    items.map(([label, value, band]) => [
      h('dt', { text: label }),
      h('dd', { text: value, dataset: band ? { band } : {} }),
    ]));
}

export async function farmView(ctx, farmId) {
  const { api, live, main, setCrumbs } = ctx;
  const [farm, overview] = await Promise.all([
    api.get(path`/api/farms/${farmId}`),
    api.get(path`/api/farms/${farmId}/overview`),
  ]);
  setCrumbs({ label: 'Farms', href: '#/' }, { label: farm.name || farm.id });
  const cards = new Map();
  const grid = h('div', { class: 'grid rooms' });
  const edges = h('ul', { class: 'items edges' });
  const alerts = alertsPanel(ctx, farmId);

  let roomNames = new Map();

  function renderEdges(list) {
    clear(edges, list.length ? list.map((e) => h('li', { dataset: { edge: e.id, online: e.online } },
      h('span', { class: `dot ${e.online ? 'on' : 'off'}` }),
      h('span', { text: `${e.name || e.id} — ${e.online ? 'online' : 'offline'}` }),
      h('span', { class: 'muted small', text: ` · seen ${ago(e.last_seen)}` }),
      edgeHealth(e, roomNames)))
      : h('li', { class: 'muted' }, 'No edge gateway registered. ',
        h('a', { href: `#/farm/${encodeURIComponent(farmId)}/setup/edges`, text: 'Register one' })));
  }

  function render(snapshot) {
    roomNames = new Map(snapshot.rooms.map((r) => [r.id, r.name || r.id]));
    cards.clear();
    clear(grid, snapshot.rooms.length
      ? snapshot.rooms.map((room) => {
        const card = roomCard(farmId, room);
        cards.set(room.id, card);
        return card.el;
      })
      : h('p', { class: 'muted' }, 'No rooms yet. ',
        h('a', { href: `#/farm/${encodeURIComponent(farmId)}/setup/rooms`, text: 'Add rooms and devices in Set-up' })));
    renderEdges(snapshot.edges);
  }

  let edgeList = overview.edges;
  render(overview);
  const base = `#/farm/${encodeURIComponent(farmId)}`;
  clear(main,
    h('div', { class: 'farm-head' },
      h('h1', { text: farm.name || farm.id }),
      h('nav', { class: 'farm-links', 'aria-label': 'farm' },
        h('a', { href: `${base}/setup`, text: 'Set-up' }),
        h('a', { href: `${base}/alarms`, text: 'Alarms' }),
        h('a', { href: '#/account', text: 'Account' }),
        h('a', { href: '#/farms', text: 'All farms' }))),
    grid,
    h('div', { class: 'grid two' },
      alerts.el,
      h('section', { class: 'card panel', 'aria-label': 'edges' }, h('h2', { text: 'Edge gateways' }), edges)));

  const handlers = {
    reading: (event) => {
      const msg = event.detail;
      if (msg.farm_id === farmId && cards.has(msg.room_id)) cards.get(msg.room_id).reading(msg);
    },
    edge: (event) => {
      const msg = event.detail;
      if (msg.farm_id !== farmId) return;
      // The event carries presence only: the health read last is kept.
      const old = edgeList.find((e) => e.id === msg.edge_id) || {};
      edgeList = edgeList.filter((e) => e.id !== msg.edge_id)
        .concat([{ ...old, id: msg.edge_id, name: msg.name, online: msg.online, last_seen: msg.last_seen }])
        .sort((a, b) => a.id.localeCompare(b.id));
      renderEdges(edgeList);
    },
    resync: async () => {
      const fresh = await api.get(path`/api/farms/${farmId}/overview`);
      edgeList = fresh.edges;
      render(fresh);
      await alerts.load();
    },
    room: async (event) => {
      // Renamed or a new stage (here, elsewhere, or on the edge): its bands changed too.
      if (event.detail.farm_id !== farmId) return;
      const fresh = await api.get(path`/api/farms/${farmId}/overview`);
      edgeList = fresh.edges;
      render(fresh);
    },
  };
  // Listening before the alarms load, as the room page: nothing said meanwhile is missed.
  const stopListening = live.listen(handlers);
  live.subscribe({ farm_id: farmId });
  try {
    await alerts.load();
  } catch (err) {
    stopListening();
    alerts.dispose();
    throw err;
  }
  const ticker = setInterval(async () => {
    for (const card of cards.values()) card.refresh();
    // Backlog and clock offset move without a presence change: read them again.
    try {
      edgeList = (await api.get(path`/api/farms/${farmId}/overview`)).edges;
      renderEdges(edgeList);
    } catch { /* offline for a moment: the next tick tries again */ }
  }, 30000);
  return () => {
    clearInterval(ticker);
    alerts.dispose();
    stopListening();
  };
}
