// Side panels kept current over the live socket: active alerts (farm or one room) and the AI
// recommendations of a room.

import { inFarm, path } from './api.js';
import { h, clear, ago, words } from './dom.js';

function listen(live, type, handler) {
  live.addEventListener(type, handler);
  return () => live.removeEventListener(type, handler);
}

export function alertsPanel({ api, live }, farmId, roomId = null) {
  const list = h('ul', { class: 'items' });
  const el = h('section', { class: 'card panel alerts', 'aria-label': 'alerts' },
    h('h2', { text: 'Alerts' }), list);
  const alerts = new Map();

  function render() {
    const shown = [...alerts.values()].sort((a, b) => b.id - a.id);
    if (!shown.length) {
      clear(list, h('li', { class: 'muted', text: 'No active alerts.' }));
      return;
    }
    clear(list, shown.map((a) => h('li', { class: `alert ${a.state}`, dataset: { alert: a.id } },
      h('span', { class: `badge ${a.severity}`, text: a.state === 'resolved' ? 'resolved' : a.severity }),
      h('span', { class: 'what', text: a.message }),
      h('span', { class: 'when muted', text: `${a.room_id ? `${a.room_id} · ` : ''}since ${ago(a.started_at)}` }))));
  }

  async function load() {
    const answer = await api.get(path`/api/farms/${farmId}/alerts?state=active&limit=50`);
    alerts.clear();
    for (const a of answer.items) if (!roomId || a.room_id === roomId) alerts.set(a.id, a);
    render();
  }

  const stop = listen(live, 'alert', (event) => {
    const { farm_id: farm, alert } = event.detail;
    if (farm !== farmId || (roomId && alert.room_id !== roomId)) return;
    alerts.set(alert.id, alert);
    render();
    if (alert.state === 'resolved') {
      setTimeout(() => { alerts.delete(alert.id); render(); }, 60000);
    }
  });
  return { el, load, dispose: stop };
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
