// A room's devices: one row per device with its state, when it was last heard from, and for an
// actuator the controls and the life of its newest command (pending → delivered → acked/failed).

import { inFarm, path } from './api.js';
import { h, clear, formatValue, metricInfo, words, ago, actuatorLabel, NODE_METRICS } from './dom.js';

const FINAL = ['acked', 'failed', 'timed_out', 'expired'];

export function deviceRow(ctx, farmId, roomId, device, canOperate) {
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
