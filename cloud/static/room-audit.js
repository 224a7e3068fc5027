// The command audit: who or what switched which actuator, when, why, and what came of it (the
// device's ack and how long it took). A room's recent commands here; the farm's in view-alarms.

import { inFarm, path } from './api.js';
import { h, clear, actuatorLabel } from './dom.js';
import { when, relative, duration } from './operate-format.js';

export const OUTCOME_WORDS = {
  pending: 'Waiting',
  delivered: 'Sent to the edge',
  acked: 'Done',
  failed: 'Failed',
  timed_out: 'No answer',
  expired: 'Expired before delivery',
  superseded: 'Replaced by a newer command',
};
export const ORIGIN_WORDS = {
  user: 'A person (web)',
  automation: 'Automation',
  edge_page: 'Edge page',
  home_assistant: 'Home Assistant',
  edge_start: 'Edge start-up',
  cloud: 'Cloud',
};
const GOOD = new Set(['acked']);
const BAD = new Set(['failed', 'timed_out', 'expired']);

function actionText(entry) {
  if (entry.action === 'on') return 'Switched on';
  if (entry.action === 'off') return 'Switched off';
  if (entry.action === 'set') return entry.value === null ? 'Set' : `Set to ${entry.value} %`;
  return entry.action;
}

function outcomeText(entry) {
  let text = OUTCOME_WORDS[entry.outcome] || entry.outcome;
  if (entry.outcome === 'acked' && entry.ack_seconds !== null) text += ` · device answered in ${duration(entry.ack_seconds)}`;
  if (entry.error && entry.outcome !== 'acked') text += ` · ${entry.error}`;
  return text;
}

export function auditItem(entry, { showRoom = false } = {}) {
  const device = entry.device_name || entry.device_id;
  const role = entry.actuator ? ` (${actuatorLabel(entry.actuator)})` : '';
  const tone = GOOD.has(entry.outcome) ? 'ok' : (BAD.has(entry.outcome) ? 'bad' : 'wait');
  return h('li', { class: 'audit-row', dataset: { command: entry.command_id, outcome: entry.outcome, origin: entry.origin } },
    h('time', { class: 'at muted small', datetime: entry.at, title: relative(entry.at), text: when(entry.at) }),
    h('span', { class: 'what' },
      h('strong', { text: `${actionText(entry)}: ${device}` }), role,
      showRoom ? h('span', { class: 'muted', text: ` · ${entry.room_name || entry.room_id}` }) : null,
      entry.hold_minutes ? h('span', { class: 'muted', text: ` · holds automation off ${entry.hold_minutes} min` }) : null),
    h('span', { class: 'who' }, h('span', { class: 'muted small', text: 'by ' }), entry.by),
    h('span', { class: `outcome ${tone}`, text: outcomeText(entry) }),
    entry.reason && entry.origin === 'automation' ? h('span', { class: 'why muted small', text: `Because: ${entry.reason}` }) : null);
}

export function auditSection(ctx, farmId, roomId) {
  const { api, live } = ctx;
  const list = h('ul', { class: 'items audit' });
  const status = h('p', { class: 'muted small', role: 'status' });
  const more = h('button', { type: 'button', text: 'Show older', hidden: true });
  const deviceSelect = h('select', { id: 'audit-device', name: 'device' }, h('option', { value: '', text: 'All actuators' }));
  const el = h('section', { class: 'card panel audit-section', 'aria-label': 'command audit' },
    h('div', { class: 'row' },
      h('h2', { text: 'Who switched what' }),
      h('a', { class: 'more', href: `#/farm/${encodeURIComponent(farmId)}/alarms/audit/room/${encodeURIComponent(roomId)}`, text: 'All of this room’s commands' })),
    h('div', { class: 'filters' }, h('label', { for: 'audit-device', text: 'Actuator' }), deviceSelect),
    list, status, more);
  let cursor = null;
  let timer = null;
  let devicesLoaded = false;

  const url = () => {
    const device = deviceSelect.value ? path`&device_id=${deviceSelect.value}` : '';
    return inFarm(path`/api/rooms/${roomId}/command-audit?limit=20` + device, farmId);
  };

  async function page(reset) {
    const answer = await api.get(reset || !cursor ? url() : `${url()}&cursor=${encodeURIComponent(cursor)}`);
    const rows = answer.items.map((e) => auditItem(e));
    if (reset) clear(list, rows.length ? rows : h('li', { class: 'muted', text: 'No commands yet.' }));
    else list.append(...rows);
    cursor = answer.next_cursor;
    more.hidden = !cursor;
  }

  async function loadDevices() {
    if (devicesLoaded) return;
    const devices = await api.all(inFarm(path`/api/rooms/${roomId}/devices?limit=200`, farmId));
    for (const d of devices.filter((x) => x.kind === 'actuator')) {
      deviceSelect.append(h('option', { value: d.id, text: d.name || d.id }));
    }
    devicesLoaded = true;
  }

  async function load() {
    status.textContent = '';
    try {
      await Promise.all([page(true), loadDevices()]);
    } catch (err) {
      status.textContent = `Could not load the commands: ${err.message}`;
    }
  }

  deviceSelect.addEventListener('change', load);
  more.addEventListener('click', async () => {
    more.disabled = true;
    try { await page(false); } catch (err) { status.textContent = `Could not load more: ${err.message}`; }
    more.disabled = false;
  });
  // A command made or answered in this room: the newest rows again, once for a burst.
  const onCommand = (event) => {
    if (event.detail.farm_id !== farmId || event.detail.room_id !== roomId) return;
    clearTimeout(timer);
    // Not while the socket is down: the cloud is away, and "resync" reloads once it is back.
    timer = setTimeout(() => { if (live.state === 'live') page(true).catch(() => {}); }, 1000);
  };
  // The edge's own switches (automation, its page, Home Assistant) show as a device's new status.
  live.addEventListener('command', onCommand);
  live.addEventListener('status', onCommand);
  return {
    el,
    load,
    dispose: () => {
      clearTimeout(timer);
      live.removeEventListener('command', onCommand);
      live.removeEventListener('status', onCommand);
    },
  };
}
