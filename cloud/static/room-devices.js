// A room's devices: one row per device with its state, when it was last heard from (its last
// message of any kind, as the edge saw it), and for an actuator whether automation drives it or a
// manual hold ("held on by Ana for 30 min — 12 min left") or a safety limit ("on: minimum
// on-time, 2 min left") keeps it, controls to hold it on or off for a chosen time and to put it
// back to auto, and the life of its newest command (pending → delivered → acked/failed).

import { inFarm, path } from './api.js';
import { h, clear, formatValue, metricInfo, words, ago, actuatorLabel, NODE_METRICS } from './dom.js';
import { roomAutomation, modeText, minutesText } from './room-why.js';
import { esphomeButton } from './esphome-download.js';

const FINAL = ['acked', 'failed', 'timed_out', 'expired'];
const HOLD_MINUTES = [15, 30, 60, 120, 240, 480, 1440];
const DEFAULT_HOLD = 30;

// "at least 3 min on and 2 min off, at most 2 h on at a time"
export function safetyText(safety) {
  if (!safety) return '';
  const span = (s) => (s >= 60 ? minutesText(s / 60) : `${s} s`);
  const parts = [];
  if (safety.min_on_s) parts.push(`at least ${span(safety.min_on_s)} on`);
  if (safety.min_off_s) parts.push(`at least ${span(safety.min_off_s)} off`);
  if (safety.max_on_s) parts.push(`at most ${span(safety.max_on_s)} on at a time`);
  if (safety.max_duty) parts.push(`on at most ${Math.round(safety.max_duty * 100)} % of any hour`);
  return parts.length ? `Safety limits: ${parts.join(', ')}.` : 'No safety limits.';
}

export function deviceRow(ctx, farmId, roomId, device, canOperate) {
  const label = device.actuator ? actuatorLabel(device.actuator) : 'sensor';
  const dot = h('span', { class: 'dot' });
  const state = h('span', { class: 'state' });
  const seen = h('span', { class: 'muted small why-seen' });
  const firmware = h('span', { class: 'muted small firmware', dataset: { firmware: '' } });
  const life = h('ol', { class: 'life', 'aria-label': `${label} command`, 'aria-live': 'polite' });
  const error = h('p', { class: 'error small', role: 'alert', hidden: true });
  const commands = new Map();  // id → {action, steps: [status…], created}
  let current = null;
  let info = { ...device };

  const isActuator = device.kind === 'actuator';
  const name = device.name || device.id;
  const holdsUrl = (rest = '') => inFarm(path`/api/rooms/${roomId}/holds` + rest, farmId);
  const mode = h('p', { class: 'why-mode small', 'aria-live': 'polite' });
  const limits = h('p', { class: 'why-limits muted small' });
  const durationId = `hold-minutes-${device.id}`;
  const duration = h('select', { id: durationId, name: 'minutes' },
    HOLD_MINUTES.map((m) => h('option', { value: m, text: minutesText(m) })));
  duration.value = String(DEFAULT_HOLD);
  const back = h('button', { type: 'button', class: 'why-auto', text: 'Back to auto', hidden: true,
    'aria-label': `${name}: back to auto`, dataset: { action: 'auto' }, onclick: () => release() });
  let auto = null;  // this row's actuator in the room's automation state

  async function hold(action) {
    error.hidden = true;
    try {
      const made = await ctx.api.request('POST', holdsUrl(),
        { device_id: device.id, action, minutes: Number(duration.value) });
      command(made);
      mode.textContent = `${action === 'on' ? 'Holding on' : 'Holding off'} for ${minutesText(Number(duration.value))}: sent to the edge…`;
    } catch (err) {
      error.textContent = `${label} hold ${action}: ${err.message}`;
      error.hidden = false;
    }
  }

  async function release() {
    error.hidden = true;
    try {
      const made = await ctx.api.request('DELETE', holdsUrl(path`/${device.id}`));
      command(made);
      mode.textContent = 'Back to auto: sent to the edge…';
    } catch (err) {
      error.textContent = `${label} back to auto: ${err.message}`;
      error.hidden = false;
    }
  }

  // The actuator's safety limits, changed in minutes (and % of an hour); stored in the cloud
  // and applied by the edge whatever rules or holds ask.
  const limitsEditor = h('div', { class: 'why-limits-editor' });
  const editLimits = h('button', { type: 'button', class: 'linkish why-edit-limits', text: 'Change limits',
    'aria-label': `Change limits: ${name} safety limits`, onclick: () => openLimits() });

  function openLimits() {
    const current = (auto && auto.safety) || {};
    const fields = [
      ['min_on_s', 'Stay on at least (minutes)', 60],
      ['min_off_s', 'Stay off at least (minutes)', 60],
      ['max_on_s', 'Run at most at a time (minutes, empty: no limit)', 60],
      ['max_duty', 'On at most this share of any hour (%, empty: no limit)', 0.01],
    ];
    const inputs = {};
    const errors = {};
    const rows = fields.map(([key, text, scale]) => {
      const id = `limit-${device.id}-${key}`;
      const value = current[key];
      inputs[key] = h('input', { id, name: key, type: 'text', inputmode: 'decimal', autocomplete: 'off',
        value: value === null || value === undefined ? '' : String(+(value / scale).toFixed(2)),
        'aria-describedby': `${id}-error` });
      errors[key] = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
      return h('div', { class: 'field' }, h('label', { for: id, text }), inputs[key], errors[key]);
    });
    const formError = h('p', { class: 'error small', role: 'alert', hidden: true });
    const form = h('form', { class: 'why-form why-limits-form', novalidate: true },
      h('h3', { text: `Safety limits of ${name}` }), rows, formError,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', text: 'Save limits' }),
        h('button', { type: 'button', text: 'Use the defaults', onclick: () => save(null) }),
        h('button', { type: 'button', text: 'Cancel', onclick: () => clear(limitsEditor) })));
    async function save(safety) {
      formError.hidden = true;
      for (const [key, p] of Object.entries(errors)) { p.hidden = true; inputs[key].removeAttribute('aria-invalid'); }
      try {
        await ctx.api.request('PATCH', inFarm(path`/api/devices/${device.id}`, farmId), { safety });
        clear(limitsEditor);
        mode.textContent = 'Safety limits saved; the edge applies them within seconds.';
      } catch (err) {
        const leftover = [];
        for (const e of err.errors || []) {
          const key = Object.keys(errors).find((k) => String(e.field).endsWith(k));
          if (key) {
            errors[key].textContent = e.message;
            errors[key].hidden = false;
            inputs[key].setAttribute('aria-invalid', 'true');
          } else leftover.push(e.message);
        }
        if (leftover.length || !(err.errors || []).length) {
          formError.textContent = leftover.join('; ') || err.message;
          formError.hidden = false;
        }
      }
    }
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const safety = {};
      for (const [key, , scale] of fields) {
        const text = inputs[key].value.trim().replace(',', '.');
        const n = Number(text);
        if (text === '') safety[key] = key.startsWith('min') ? 0 : null;
        else safety[key] = Number.isFinite(n) ? +(n * scale).toFixed(6) : text;
      }
      save(safety);
    });
    clear(limitsEditor, form);
    inputs.min_on_s.focus();
  }

  const controls = isActuator && canOperate
    ? h('div', { class: 'actions why-controls' },
      h('label', { for: durationId, text: 'Hold for' }), duration,
      ['on', 'off'].map((action) => h('button', {
        type: 'button', text: action === 'on' ? 'Hold on' : 'Hold off',
        'aria-label': `${name}: hold ${action}`, dataset: { action }, onclick: () => hold(action),
      })),
      back)
    : null;

  const el = h('li', { class: 'device', dataset: { device: device.id, kind: device.kind } },
    h('div', { class: 'row' },
      h('span', {}, dot, h('strong', { text: name }),
        h('span', { class: 'muted small', text: ` ${label}` })),
      state),
    isActuator ? mode : null,
    isActuator ? h('div', { class: 'row wrap' }, limits, canOperate ? editLimits : null) : null,
    limitsEditor,
    h('div', { class: 'row wrap' }, seen, firmware, controls,
      esphomeButton(ctx, farmId, device, (err) => { error.textContent = err.message; error.hidden = false; })),
    life, error);

  function renderWhy() {
    if (!isActuator) return;
    el.dataset.mode = auto ? auto.mode : 'unknown';
    mode.textContent = auto ? modeText(auto) : 'Waiting for the edge to report…';
    limits.textContent = auto ? safetyText(auto.safety) : '';
    back.hidden = !(auto && (auto.hold || (auto.last_hold && auto.last_hold.action !== 'auto'
      && !FINAL.includes(auto.last_hold.status))));
  }

  let attached = false;
  const unsubscribe = roomAutomation(ctx, farmId, roomId).subscribe((snapshot) => {
    if (el.isConnected) attached = true;
    else if (attached) { unsubscribe(); return; }  // the row was replaced
    auto = snapshot.actuators.find((a) => a.device_id === device.id) || null;
    const seenHere = snapshot.devices.find((d) => d.device_id === device.id);
    if (seenHere && seenHere.last_seen
        && (!info.last_seen || new Date(seenHere.last_seen) > new Date(info.last_seen))) {
      info.last_seen = seenHere.last_seen;
    }
    if (auto && auto.on !== null && !(info.state && 'on' in info.state)) {
      info.state = { ...(info.state || {}), on: auto.on };
    }
    renderState();
  });

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
    const last = [info.last_seen, info.status_at].filter(Boolean)
      .sort((a, b) => new Date(b) - new Date(a))[0];
    seen.textContent = `last seen ${ago(last)}`;
    if (last) seen.title = new Date(last).toLocaleString();
    firmware.textContent = info.firmware ? `firmware ${info.firmware}` : '';
    firmware.dataset.firmware = info.firmware || '';
    renderWhy();
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
    const what = cmd.action === 'auto' ? 'back to auto'
      : `${cmd.action}${cmd.hold_minutes ? ` for ${minutesText(cmd.hold_minutes)}` : ''}`;
    clear(life, h('li', { class: 'what', text: `${label} ${what}` }),
      cmd.steps.map((step) => h('li', { class: `step ${step}`, text: words(step) })),
      cmd.error ? h('li', { class: 'error small', text: cmd.error }) : null);
  }

  // A command event or answer: each state it passes through is shown once, in order.
  function command(cmd) {
    if (cmd.device_id && cmd.device_id !== device.id) return;
    let entry = commands.get(cmd.id);
    if (!entry) {
      entry = { action: cmd.action, hold_minutes: cmd.hold_minutes, steps: [],
        created: new Date(cmd.created_at).getTime(), error: null };
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
    info = { ...info, online: msg.online, state: msg.state, status_at: msg.time,
      firmware: msg.firmware || info.firmware };
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
