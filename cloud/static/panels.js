// Side panels kept current over the live socket: open alarms (farm or one room) and the AI
// recommendations of a room.

import { inFarm, path } from './api.js';
import { h, clear, words } from './dom.js';
import { when, relative, SEVERITY_WORDS, STATUS_WORDS, farmRole, canOperateRole } from './operate-format.js';

function listen(live, type, handler) {
  live.addEventListener(type, handler);
  return () => live.removeEventListener(type, handler);
}

// One alarm as a list item: severity, what and where, since when, who acknowledged or cleared
// it, and (for operators) Acknowledge and Clear, each with an optional note.
export function alarmItem(api, farmId, alarm, { canOperate, showRoom, onChange }) {
  // Where: the room (a link to it, on farm-wide lists) and the device.
  const where = [
    showRoom && alarm.room_id ? h('a', {
      href: `#/farm/${encodeURIComponent(farmId)}/room/${encodeURIComponent(alarm.room_id)}`,
      text: alarm.room_name || alarm.room_id,
    }) : null,
    alarm.device_id ? h('span', { class: 'muted', text: alarm.device_name || alarm.device_id }) : null,
  ].filter(Boolean).flatMap((part, i) => (i ? [h('span', { class: 'muted', text: ' · ' }), part] : [part]));
  const state = [];
  if (alarm.status === 'cleared') {
    state.push(alarm.cleared_by
      ? `Cleared by ${alarm.cleared_by} ${relative(alarm.resolved_at)}`
      : `Ended ${relative(alarm.resolved_at)} (${when(alarm.resolved_at)})`);
    if (alarm.clear_note) state.push(`“${alarm.clear_note}”`);
  }
  if (alarm.acknowledged_at) {
    state.push(`Acknowledged by ${alarm.acknowledged_by || 'a removed user'} ${relative(alarm.acknowledged_at)}`);
    if (alarm.ack_note) state.push(`“${alarm.ack_note}”`);
  }
  const msg = h('p', { class: 'small', role: 'status' });
  const actions = h('div', { class: 'actions' });
  const item = h('li', { class: `alarm ${alarm.status}`, dataset: { alert: alarm.id, status: alarm.status, severity: alarm.severity } },
    h('div', { class: 'alarm-head' },
      h('span', { class: `badge ${alarm.severity}`, text: SEVERITY_WORDS[alarm.severity] || alarm.severity }),
      h('strong', { class: 'what', text: alarm.kind_label }),
      where.length ? h('span', { class: 'where' }, h('span', { class: 'muted', text: ' · ' }), where) : null,
      alarm.status !== 'active' ? h('span', { class: `status ${alarm.status}`, text: STATUS_WORDS[alarm.status] }) : null),
    h('p', { class: 'message', text: alarm.message }),
    h('p', { class: 'muted small when' },
      h('time', { datetime: alarm.started_at, title: when(alarm.started_at), text: `Since ${when(alarm.started_at)} (${relative(alarm.started_at)})` })),
    state.length ? h('p', { class: 'small who', text: state.join(' · ') }) : null,
    actions, msg);

  function ask(verb, label) {
    const id = `alarm-${alarm.id}-${verb}-note`;
    const note = h('input', { id, name: 'note', maxlength: 500, autocomplete: 'off' });
    const form = h('form', { class: 'alarm-note' },
      h('label', { for: id, text: `Note (optional) — ${label.toLowerCase()}` }), note,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', text: label }),
        h('button', { type: 'button', text: 'Cancel', onclick: () => cancel() })));
    function cancel() {
      form.remove();
      buttons();
      const first = actions.querySelector('button');
      if (first) first.focus();
    }
    form.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') cancel();
    });
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      msg.textContent = '';
      for (const b of form.querySelectorAll('button')) b.disabled = true;
      try {
        const fresh = await api.request('POST', path`/api/farms/${farmId}/alerts/${alarm.id}/${verb}`, { note: note.value.trim() });
        onChange(fresh);
      } catch (err) {
        msg.textContent = `Could not ${label.toLowerCase()}: ${err.message}`;
        for (const b of form.querySelectorAll('button')) b.disabled = false;
      }
    });
    clear(actions, form);
    note.focus();
  }

  function buttons() {
    if (!canOperate) return;
    clear(actions,
      !alarm.acknowledged_at ? h('button', { type: 'button', text: 'Acknowledge', onclick: () => ask('acknowledge', 'Acknowledge') }) : null,
      alarm.status !== 'cleared' ? h('button', { type: 'button', text: 'Clear', onclick: () => ask('clear', 'Clear') }) : null);
  }
  buttons();
  return item;
}

export function alertsPanel({ api, live }, farmId, roomId = null) {
  const list = h('ul', { class: 'items alarms' });
  const summary = h('span', { class: 'muted small', role: 'status' });
  const history = h('a', {
    href: `#/farm/${encodeURIComponent(farmId)}/alarms${roomId ? `/room/${encodeURIComponent(roomId)}` : ''}`,
    class: 'more',
    text: 'Alarm history',
  });
  const el = h('section', { class: 'card panel alerts', 'aria-label': 'alarms' },
    h('div', { class: 'row' }, h('h2', { text: 'Alarms' }), summary, history), list);
  const alarms = new Map();
  let canOperate = false;
  let timer = null;

  function render() {
    const shown = [...alarms.values()].sort((a, b) => (a.status === 'cleared') - (b.status === 'cleared') || b.id - a.id);
    const waiting = shown.filter((a) => a.status === 'active').length;
    summary.textContent = waiting ? `${waiting} waiting for someone` : '';
    if (!shown.length) {
      clear(list, h('li', { class: 'muted', text: 'No active alarms.' }));
      return;
    }
    clear(list, shown.map((a) => alarmItem(api, farmId, a, {
      canOperate,
      showRoom: !roomId,
      onChange: (fresh) => {
        alarms.set(fresh.id, fresh);
        if (fresh.status === 'cleared') setTimeout(() => { alarms.delete(fresh.id); render(); }, 60000);
        render();
      },
    })));
  }

  async function load() {
    const room = roomId ? path`&room_id=${roomId}` : '';
    const [role, answer] = await Promise.all([
      farmRole(api, farmId).catch(() => null),
      api.get(path`/api/farms/${farmId}/alerts?status=open&limit=100` + room),
    ]);
    canOperate = canOperateRole(role);
    for (const [id, a] of alarms) if (a.status !== 'cleared') alarms.delete(id);
    for (const a of answer.items) alarms.set(a.id, a);
    render();
  }

  // Any change (new, acknowledged, cleared; here or by someone else): reload the list, once
  // for a burst. Cleared ones stay a minute so the change is seen.
  // A live change: reload, but not under someone typing a note (once its form closes).
  const reload = (after = 250) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (list.querySelector('form')) reload(2000);
      else if (live.state === 'live') load().catch((err) => console.warn('alarms', err));
    }, after);
  };
  const stop = listen(live, 'alert', (event) => {
    const { farm_id: farm, alert } = event.detail;
    if (farm !== farmId || (roomId && alert && alert.room_id !== roomId)) return;
    if (alert && alert.state === 'resolved' && alarms.has(alert.id)) {
      alarms.set(alert.id, { ...alarms.get(alert.id), status: 'cleared', resolved_at: alert.resolved_at });
      setTimeout(() => { alarms.delete(alert.id); render(); }, 60000);
    }
    reload();
  });
  // The caller's own notice of an alarm comes whatever the page subscribed to (and may come
  // before the page's subscription does): reload then too.
  const stopNotes = listen(live, 'notification', (event) => {
    const note = event.detail.notification;
    if (!note || note.farm_id !== farmId || (roomId && note.room_id !== roomId)) return;
    reload();
  });
  return { el, load, dispose: () => { clearTimeout(timer); stop(); stopNotes(); } };
}

export function recommendationsPanel({ api, live }, farmId, roomId, canOperate) {
  const roomUrl = (rest) => inFarm(path`/api/rooms/${roomId}` + rest, farmId);
  const list = h('ul', { class: 'items' });
  const status = h('p', { class: 'muted small', role: 'status' });
  const ask = h('button', { type: 'button', text: 'Ask for advice', hidden: !canOperate });
  const el = h('section', { class: 'card panel recommendations', 'aria-label': 'recommendations' },
    h('div', { class: 'row' }, h('h2', { text: 'Recommendations' }), ask), status, list);
  const recs = new Map();

  async function decide(rec, verdict) {
    try {
      const done = await api.request('POST',
        roomUrl(path`/ai/recommendations/${rec.id}/${verdict}`));
      recs.delete(done.id);
      status.textContent = `${words(verdict === 'accept' ? 'accepted' : 'dismissed')}: ${rec.title}`;
      render();
    } catch (err) {
      status.textContent = `Could not ${verdict}: ${err.message}`;
    }
  }

  function render() {
    const shown = [...recs.values()].sort((a, b) => b.id - a.id);
    if (!shown.length) {
      clear(list, h('li', { class: 'muted', text: 'Nothing to recommend right now.' }));
      return;
    }
    clear(list, shown.map((rec) => h('li', { class: 'rec', dataset: { recommendation: rec.id } },
      h('span', { class: `badge ${rec.severity}`, text: rec.severity }),
      h('strong', { class: 'what', text: rec.title }),
      h('p', { class: 'small', text: rec.reason }),
      canOperate ? h('div', { class: 'actions' },
        h('button', { type: 'button', text: 'Accept', onclick: () => decide(rec, 'accept') }),
        h('button', { type: 'button', text: 'Dismiss', onclick: () => decide(rec, 'dismiss') })) : null)));
  }

  ask.addEventListener('click', async () => {
    ask.disabled = true;
    try {
      const job = await api.request('POST', roomUrl('/ai/recommend'));
      status.textContent = job.deduplicated ? 'Already thinking about this room…' : 'Asked; advice appears here.';
    } catch (err) {
      status.textContent = `Could not ask: ${err.message}`;
    } finally {
      ask.disabled = false;
    }
  });

  async function load() {
    const answer = await api.get(roomUrl('/ai/recommendations?status=open&limit=20'));
    recs.clear();
    for (const rec of answer.items) recs.set(rec.id, rec);
    render();
  }

  const stop = listen(live, 'recommendation', (event) => {
    const rec = event.detail.recommendation;
    if (event.detail.farm_id !== farmId || rec.room_id !== roomId) return;
    if (rec.status === 'open') recs.set(rec.id, { ...recs.get(rec.id), ...rec });
    else recs.delete(rec.id);
    render();
  });
  return { el, load, dispose: stop };
}
