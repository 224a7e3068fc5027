// A farm's alarms with their history (filters: status, severity, room, time; paged), and its
// command audit at #/farm/{farm}/alarms/audit (filters: room, actuator, who, outcome, time).

import { path } from './api.js';
import { h, clear } from './dom.js';
import { alarmItem } from './panels.js';
import { auditItem, OUTCOME_WORDS, ORIGIN_WORDS } from './room-audit.js';
import { fromLocalInput, SEVERITY_WORDS, STATUS_WORDS, farmRole, canOperateRole } from './operate-format.js';

function select(id, label, options) {
  const el = h('select', { id, name: id },
    options.map(([value, text]) => h('option', { value, text })));
  return { el, field: h('div', { class: 'field' }, h('label', { for: id, text: label }), el) };
}

function timeField(id, label) {
  const el = h('input', { id, name: id, type: 'datetime-local' });
  return { el, field: h('div', { class: 'field' }, h('label', { for: id, text: label }), el) };
}

// A filtered, paged list: `build()` makes the URL from the filters, `item(row)` the <li>.
function pagedList({ api, build, item, empty }) {
  const list = h('ul', { class: 'items' });
  const status = h('p', { class: 'small', role: 'status' });
  const more = h('button', { type: 'button', text: 'Show older', hidden: true });
  let cursor = null;
  let count = 0;
  async function page(reset) {
    list.setAttribute('aria-busy', 'true');
    try {
      await fetchPage(reset);
    } finally {
      list.setAttribute('aria-busy', 'false');
    }
  }
  async function fetchPage(reset) {
    const url = build();
    const answer = await api.get(reset || !cursor ? url : `${url}&cursor=${encodeURIComponent(cursor)}`);
    const rows = answer.items.map(item);
    count = reset ? rows.length : count + rows.length;
    if (reset) clear(list, rows.length ? rows : h('li', { class: 'muted', text: empty }));
    else list.append(...rows);
    cursor = answer.next_cursor;
    more.hidden = !cursor;
    status.textContent = `${count}${cursor ? '+' : ''} shown.`;
  }
  let waiting = null;
  async function load() {
    try { await page(true); } catch (err) { status.textContent = `Could not load: ${err.message}`; }
  }
  // A live change: reload, but not under someone typing a note (once its form closes).
  function refresh() {
    clearTimeout(waiting);
    if (list.querySelector('form')) {
      waiting = setTimeout(refresh, 2000);
      return;
    }
    load();
  }
  more.addEventListener('click', async () => {
    more.disabled = true;
    try { await page(false); } catch (err) { status.textContent = `Could not load more: ${err.message}`; }
    more.disabled = false;
  });
  return { el: h('div', {}, status, list, more), load, refresh, stop: () => clearTimeout(waiting) };
}

function span(from, to) {
  let q = '';
  if (from.el.value) q += `&from=${encodeURIComponent(fromLocalInput(from.el.value))}`;
  if (to.el.value) q += `&to=${encodeURIComponent(fromLocalInput(to.el.value))}`;
  return q;
}

export async function alarmsView(ctx, farmId, rest = []) {
  const { api, live, main, setCrumbs } = ctx;
  // #/farm/{farm}/alarms[/audit][/room/{room}]: the tab, and a room to start filtered on.
  const tab = rest[0] === 'audit' ? 'audit' : 'alarms';
  const after = tab === 'audit' ? rest.slice(1) : rest;
  const startRoom = after[0] === 'room' && after[1] ? after[1] : '';
  const [farm, rooms, role] = await Promise.all([
    api.get(path`/api/farms/${farmId}`),
    api.all(path`/api/farms/${farmId}/rooms?limit=500`),
    farmRole(api, farmId).catch(() => null),
  ]);
  const canOperate = canOperateRole(role);
  const farmHref = `#/farm/${encodeURIComponent(farmId)}`;
  setCrumbs({ label: 'Farms', href: '#/' }, { label: farm.name || farmId, href: farmHref },
    { label: tab === 'audit' ? 'Command audit' : 'Alarms' });
  const roomOptions = [['', 'All rooms'], ...rooms.map((r) => [r.id, r.name || r.id])];
  const nav = h('nav', { class: 'tabs', 'aria-label': 'alarms and audit' },
    h('a', { href: `${farmHref}/alarms`, text: 'Alarm history', 'aria-current': tab === 'alarms' ? 'page' : null }),
    h('a', { href: `${farmHref}/alarms/audit`, text: 'Command audit', 'aria-current': tab === 'audit' ? 'page' : null }));
  const form = h('form', { class: 'filters operate-filters' });
  let list;
  let stopLive = () => {};

  if (tab === 'alarms') {
    const status = select('alarm-status', 'Status', [['', 'Any'], ['open', 'Open (active or acknowledged)'],
      ...Object.entries(STATUS_WORDS)]);
    const severity = select('alarm-severity', 'Severity', [['', 'Any'], ...Object.entries(SEVERITY_WORDS)]);
    const room = select('alarm-room', 'Room', roomOptions);
    room.el.value = startRoom;
    const from = timeField('alarm-from', 'From');
    const to = timeField('alarm-to', 'To');
    list = pagedList({
      api,
      empty: 'No alarms match.',
      build: () => {
        let q = path`/api/farms/${farmId}/alerts?limit=25`;
        if (status.el.value) q += `&status=${status.el.value}`;
        if (severity.el.value) q += `&severity=${severity.el.value}`;
        if (room.el.value) q += path`&room_id=${room.el.value}`;
        return q + span(from, to);
      },
      item: (a) => alarmItem(api, farmId, a, { canOperate, showRoom: true, onChange: () => list.load() }),
    });
    clear(form, status.field, severity.field, room.field, from.field, to.field);
    let timer = null;
    const onAlert = (event) => {
      if (event.detail.farm_id !== farmId) return;
      clearTimeout(timer);
      timer = setTimeout(() => { if (live.state === 'live') list.refresh(); }, 300);
    };
    live.addEventListener('alert', onAlert);
    stopLive = () => { clearTimeout(timer); live.removeEventListener('alert', onAlert); };
  } else {
    const room = select('audit-room', 'Room', roomOptions);
    room.el.value = startRoom;
    const device = select('audit-device', 'Actuator', [['', 'All actuators']]);
    const origin = select('audit-origin', 'Made by', [['', 'Anyone'], ...Object.entries(ORIGIN_WORDS)]);
    const outcome = select('audit-outcome', 'Outcome', [['', 'Any'], ...Object.entries(OUTCOME_WORDS)]);
    const from = timeField('audit-from', 'From');
    const to = timeField('audit-to', 'To');
    device.el.disabled = true;
    room.el.addEventListener('change', async () => {
      clear(device.el, h('option', { value: '', text: 'All actuators' }));
      device.el.disabled = !room.el.value;
      if (!room.el.value) return;
      const devices = await api.all(path`/api/rooms/${room.el.value}/devices?limit=200&farm_id=${farmId}`);
      for (const d of devices.filter((x) => x.kind === 'actuator')) device.el.append(h('option', { value: d.id, text: d.name || d.id }));
    });
    if (startRoom) room.el.dispatchEvent(new Event('change'));
    list = pagedList({
      api,
      empty: 'No commands match.',
      build: () => {
        let q = path`/api/farms/${farmId}/command-audit?limit=30`;
        if (room.el.value) q += path`&room_id=${room.el.value}`;
        if (device.el.value) q += path`&device_id=${device.el.value}`;
        if (origin.el.value) q += `&origin=${origin.el.value}`;
        if (outcome.el.value) q += `&outcome=${outcome.el.value}`;
        return q + span(from, to);
      },
      item: (e) => auditItem(e, { showRoom: true }),
    });
    clear(form, room.field, device.field, origin.field, outcome.field, from.field, to.field);
    let timer = null;
    const onCommand = (event) => {
      if (event.detail.farm_id !== farmId) return;
      clearTimeout(timer);
      timer = setTimeout(() => { if (live.state === 'live') list.refresh(); }, 400);
    };
    live.addEventListener('command', onCommand);
    stopLive = () => { clearTimeout(timer); live.removeEventListener('command', onCommand); };
  }
  form.append(h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', text: 'Show' })));
  form.addEventListener('submit', (event) => { event.preventDefault(); list.load(); });

  clear(main,
    h('h1', { text: `${tab === 'audit' ? 'Command audit' : 'Alarms'} — ${farm.name || farmId}` }),
    nav,
    h('section', { class: 'card panel', 'aria-label': tab === 'audit' ? 'command audit' : 'alarm history' },
      h('h2', { text: tab === 'audit' ? 'Who switched what' : 'Alarm history' }), form, list.el));
  await list.load();
  live.subscribe({ farm_id: farmId });
  return () => { stopLive(); list.stop(); };
}
