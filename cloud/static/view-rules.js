// A room's automation rules as its edge runs them: every rule (from the species/stage profile, a
// cloud rule or override, or the edge's own file) with where it comes from, in words; and an
// editor a grower understands (device and metric pickers with units, on/off levels, schedule
// windows as times, cycles in minutes). Editing a profile rule saves a cloud override of the same
// id, which the edge then runs in its place; "Back to profile" deletes the override. The API's
// validation errors (problem+json field list) are shown next to the field they are about.

import { inFarm, path } from './api.js';
import { h, clear, actuatorLabel, metricInfo, METRICS, BANDED, ago } from './dom.js';
import { roomAutomation } from './room-why.js';

const TYPES = {
  threshold: 'Switch on a reading (thresholds)',
  schedule: 'On a schedule (times of day or a cycle)',
  pid: 'Steer to a target (PID)',
};
const SOURCES = {
  profile: ['From profile', 'from the room\'s species and stage profile'],
  cloud: ['Cloud rule', 'a rule set here in the cloud'],
  override: ['Cloud override', 'replaces the profile rule of the same id'],
  local: ['Edge file', 'from the edge\'s own config file'],
};
const NEW_RULE = {
  threshold: { metric: 'humidity_pct', on_below: 85, off_above: 90, for_s: 30 },
  schedule: { windows: [{ start: '07:00', end: '19:00' }] },
  pid: { metric: 'temperature_c', setpoint: 18, kp: 0.5, period_s: 600 },
};
// A form field → the rule fields the API may name in an error about it.
const ERROR_FIELDS = {
  actuator: ['actuator'],
  metric: ['metric'],
  mode: [],
  on: ['on_below', 'on_above'],
  off: ['off_above', 'off_below'],
  for_s: ['for_s'],
  windows: ['windows', 'start', 'end'],
  cycle_on: ['on_s'],
  cycle_every: ['every_s', 'cycle'],
  cycle_offset: ['offset_s'],
  setpoint: ['setpoint'],
  kp: ['kp'], ki: ['ki'], kd: ['kd'],
  period_s: ['period_s'],
  output_min: ['output_min'],
  output_max: ['output_max'],
  reverse: ['reverse'],
  enabled: ['enabled'],
  description: ['description'],
  id: ['id'],
};

const num = (v) => (v === null || v === undefined ? '' : String(v));
const unitOf = (metric) => metricInfo(metric).unit;

// "humidity", but "CO₂": a label is lower-cased unless it is an abbreviation.
function inSentence(label) {
  return label.length > 1 && label[1] === label[1].toLowerCase() ? label.toLowerCase() : label;
}

function minutes(seconds) {
  const m = seconds / 60;
  return Number.isInteger(m) ? `${m} min` : `${Math.round(seconds)} s`;
}

export function summary(rule) {
  if (rule.type === 'threshold') {
    const label = inSentence(metricInfo(rule.metric).label);
    const unit = unitOf(rule.metric);
    const hold = rule.for_s ? ` (after ${minutes(rule.for_s)})` : '';
    return rule.on_below !== null && rule.on_below !== undefined
      ? `On when ${label} is below ${rule.on_below} ${unit}, off above ${rule.off_above} ${unit}${hold}`
      : `On when ${label} is above ${rule.on_above} ${unit}, off below ${rule.off_below} ${unit}${hold}`;
  }
  if (rule.type === 'schedule') {
    if (rule.windows) return `On daily ${rule.windows.map((w) => `${w.start}–${w.end}`).join(', ')}`;
    const c = rule.cycle;
    return `On ${minutes(c.on_s)} every ${minutes(c.every_s)}${c.offset_s ? `, starting ${minutes(c.offset_s)} past midnight` : ''}`;
  }
  return `Steers ${inSentence(metricInfo(rule.metric).label)} to ${rule.setpoint} ${unitOf(rule.metric)} (${rule.reverse ? 'lowers it' : 'raises it'}, ${Math.round(rule.period_s / 60)} min cycles)`;
}

// The form field an API error is about: the deepest path segment naming a field, else a field
// named in a whole-rule message ("on_below must be less than off_above"), else the form.
export function fieldFor(error, names) {
  const segments = String(error.field || '').split('.');
  for (let i = segments.length - 1; i >= 0; i -= 1) {
    if (names.includes(segments[i])) return segments[i];
  }
  const mentioned = names.filter((n) => new RegExp(`\\b${n}\\b`).test(error.message || ''));
  return mentioned.length ? mentioned[0] : null;
}

function field(id, label, input, hint) {
  const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  input.setAttribute('aria-describedby', `${id}-error`);
  return {
    input, error,
    el: h('div', { class: 'field' }, h('label', { for: id, text: label }), input,
      hint ? h('p', { class: 'muted small', text: hint }) : null, error),
  };
}

function numberInput(id, value, attrs = {}) {
  return h('input', { id, name: id.replace(/^rule-/, ''), type: 'text', inputmode: 'decimal', autocomplete: 'off', value: num(value), ...attrs });
}

function parseNumber(input, { optional = false, scale = 1 } = {}) {
  const text = input.value.trim().replace(',', '.');
  if (text === '' && optional) return null;
  const n = Number(text);
  return text !== '' && Number.isFinite(n) ? n * scale : text;  // not a number: let the API say why
}

function metricOptions(current) {
  const names = [...new Set([...BANDED, ...Object.keys(METRICS), ...(current ? [current] : [])])];
  return names.map((m) => {
    const info = metricInfo(m);
    return h('option', { value: m, text: info.unit ? `${info.label} (${info.unit})` : info.label });
  });
}

// The editor of one rule (or a new one). values() gives the rule's fields for the API; the
// errors of a refused save are put next to their field.
function ruleForm({ item, type, actuators, onSave, onCancel }) {
  const rule = item ? item.rule : { type, ...NEW_RULE[type] };
  const fields = new Map();  // form field name → {input, error}
  const rows = [];
  const add = (name, f) => { fields.set(name, f); rows.push(f.el); return f.input; };

  let idInput = null;
  if (!item) {
    idInput = add('id', field('rule-id', 'Rule name (letters, digits, - and _)',
      h('input', { id: 'rule-id', name: 'id', required: true, autocomplete: 'off' })));
  }
  const actuator = add('actuator', field('rule-actuator', 'Device it switches',
    h('select', { id: 'rule-actuator', name: 'actuator' },
      actuators.map((a) => h('option', { value: a.id, text: `${a.name || a.id} (${actuatorLabel(a.actuator)})` })))));
  actuator.value = rule.actuator || (actuators[0] && actuators[0].id) || '';

  let values;
  if (type === 'threshold') {
    const metric = add('metric', field('rule-metric', 'Reading', h('select', { id: 'rule-metric', name: 'metric' }, metricOptions(rule.metric))));
    metric.value = rule.metric;
    const raising = rule.on_above === null || rule.on_above === undefined;
    const mode = add('mode', field('rule-mode', 'Switch on when the reading is',
      h('select', { id: 'rule-mode', name: 'mode' },
        h('option', { value: 'raise', text: 'too low (the device raises it: humidifier, heater)' }),
        h('option', { value: 'lower', text: 'too high (the device lowers it: fan on CO₂)' }))));
    mode.value = raising ? 'raise' : 'lower';
    const onLabel = h('span');
    const offLabel = h('span');
    const on = add('on', field('rule-on', '', numberInput('rule-on', raising ? rule.on_below : rule.on_above)));
    const off = add('off', field('rule-off', '', numberInput('rule-off', raising ? rule.off_above : rule.off_below)));
    fields.get('on').el.querySelector('label').append(onLabel);
    fields.get('off').el.querySelector('label').append(offLabel);
    const forS = add('for_s', field('rule-for_s', 'Only after it has lasted (seconds)', numberInput('rule-for_s', rule.for_s ?? 0),
      'so a passing blip does not switch the device'));
    const relabel = () => {
      const unit = unitOf(metric.value);
      const u = unit ? ` (${unit})` : '';
      onLabel.textContent = mode.value === 'raise' ? `On below${u}` : `On above${u}`;
      offLabel.textContent = mode.value === 'raise' ? `Off above${u}` : `Off below${u}`;
    };
    metric.addEventListener('change', relabel);
    mode.addEventListener('change', relabel);
    relabel();
    values = () => {
      const raise = mode.value === 'raise';
      const lo = parseNumber(on);
      const hi = parseNumber(off);
      return {
        metric: metric.value,
        on_below: raise ? lo : null, off_above: raise ? hi : null,
        on_above: raise ? null : lo, off_below: raise ? null : hi,
        for_s: parseNumber(forS),
      };
    };
  } else if (type === 'schedule') {
    const kind = add('kind', field('rule-kind', 'Runs', h('select', { id: 'rule-kind', name: 'kind' },
      h('option', { value: 'windows', text: 'at set times of day' }),
      h('option', { value: 'cycle', text: 'in a repeating cycle' }))));
    kind.value = rule.cycle ? 'cycle' : 'windows';
    const windowList = h('ol', { class: 'why-windows' });
    const windowsError = h('p', { class: 'field-error', id: 'rule-windows-error', hidden: true });
    let n = 0;
    const addWindow = (w) => {
      n += 1;
      const startId = `rule-window-${n}-start`;
      const endId = `rule-window-${n}-end`;
      const li = h('li', { class: 'why-window' },
        h('label', { for: startId, text: 'From' }),
        h('input', { id: startId, type: 'time', value: w.start, required: true, class: 'start' }),
        h('label', { for: endId, text: 'to' }),
        h('input', { id: endId, type: 'time', value: w.end, required: true, class: 'end' }),
        h('button', { type: 'button', text: 'Remove', 'aria-label': `remove window ${n}`, onclick: () => li.remove() }));
      windowList.append(li);
    };
    for (const w of rule.windows || [{ start: '07:00', end: '19:00' }]) addWindow(w);
    const windowsBox = h('fieldset', { class: 'field why-windows-box' },
      h('legend', { text: 'Times of day (an end before the start runs past midnight)' }), windowList,
      h('button', { type: 'button', text: 'Add a time window', onclick: () => addWindow({ start: '18:00', end: '20:00' }) }),
      windowsError);
    fields.set('windows', { input: windowList, error: windowsError, el: windowsBox });
    rows.push(windowsBox);
    const c = rule.cycle || { on_s: 900, every_s: 3600, offset_s: 0 };
    const cycleOn = add('cycle_on', field('rule-cycle-on', 'On for (minutes)', numberInput('rule-cycle-on', c.on_s / 60)));
    const cycleEvery = add('cycle_every', field('rule-cycle-every', 'Every (minutes)', numberInput('rule-cycle-every', c.every_s / 60)));
    const cycleOffset = add('cycle_offset', field('rule-cycle-offset', 'Starting (minutes past midnight)', numberInput('rule-cycle-offset', (c.offset_s || 0) / 60)));
    const cycleRows = ['cycle_on', 'cycle_every', 'cycle_offset'].map((name) => fields.get(name).el);
    const show = () => {
      windowsBox.hidden = kind.value !== 'windows';
      for (const row of cycleRows) row.hidden = kind.value !== 'cycle';
    };
    kind.addEventListener('change', show);
    show();
    values = () => {
      if (kind.value === 'windows') {
        return {
          windows: [...windowList.querySelectorAll('li')].map((li) => ({
            start: li.querySelector('.start').value, end: li.querySelector('.end').value })),
          cycle: null,
        };
      }
      return {
        windows: null,
        cycle: {
          on_s: parseNumber(cycleOn, { scale: 60 }),
          every_s: parseNumber(cycleEvery, { scale: 60 }),
          offset_s: parseNumber(cycleOffset, { scale: 60 }),
        },
      };
    };
  } else {
    const metric = add('metric', field('rule-metric', 'Reading', h('select', { id: 'rule-metric', name: 'metric' }, metricOptions(rule.metric))));
    metric.value = rule.metric;
    const setpoint = add('setpoint', field('rule-setpoint', `Target (${unitOf(rule.metric) || 'value'})`, numberInput('rule-setpoint', rule.setpoint)));
    const reverse = add('reverse', field('rule-reverse', 'The device lowers the reading (a fan on CO₂)',
      h('input', { id: 'rule-reverse', name: 'reverse', type: 'checkbox', checked: Boolean(rule.reverse) })));
    const kp = add('kp', field('rule-kp', 'Proportional gain', numberInput('rule-kp', rule.kp)));
    const ki = add('ki', field('rule-ki', 'Integral gain', numberInput('rule-ki', rule.ki ?? 0)));
    const kd = add('kd', field('rule-kd', 'Derivative gain', numberInput('rule-kd', rule.kd ?? 0)));
    const period = add('period_s', field('rule-period_s', 'Cycle length (seconds)', numberInput('rule-period_s', rule.period_s ?? 600)));
    const outMin = add('output_min', field('rule-output_min', 'Least on-time per cycle (%)', numberInput('rule-output_min', (rule.output_min ?? 0) * 100)));
    const outMax = add('output_max', field('rule-output_max', 'Most on-time per cycle (%)', numberInput('rule-output_max', (rule.output_max ?? 1) * 100)));
    metric.addEventListener('change', () => {
      fields.get('setpoint').el.querySelector('label').textContent = `Target (${unitOf(metric.value) || 'value'})`;
    });
    values = () => ({
      metric: metric.value, setpoint: parseNumber(setpoint), reverse: reverse.checked,
      kp: parseNumber(kp), ki: parseNumber(ki), kd: parseNumber(kd), period_s: parseNumber(period),
      output_min: parseNumber(outMin, { scale: 0.01 }), output_max: parseNumber(outMax, { scale: 0.01 }),
    });
  }
  const enabled = add('enabled', field('rule-enabled', 'Rule is on',
    h('input', { id: 'rule-enabled', name: 'enabled', type: 'checkbox', checked: rule.enabled !== false })));
  const description = add('description', field('rule-description', 'Note (what it is for)',
    h('input', { id: 'rule-description', name: 'description', type: 'text', autocomplete: 'off', value: rule.description || '', maxlength: 200 })));

  const formError = h('p', { class: 'error', role: 'alert', hidden: true });

  function clearErrors() {
    formError.hidden = true;
    for (const { input, error } of fields.values()) {
      error.hidden = true;
      error.textContent = '';
      input.removeAttribute('aria-invalid');
    }
  }

  function showErrors(err) {
    const apiNames = Object.values(ERROR_FIELDS).flat();
    const leftover = [];
    for (const e of err.errors) {
      const name = fieldFor(e, apiNames);
      const formName = name && Object.keys(ERROR_FIELDS).find((k) => ERROR_FIELDS[k].includes(name) && fields.has(k));
      if (formName) {
        const { input, error } = fields.get(formName);
        error.textContent = error.textContent ? `${error.textContent}; ${e.message}` : e.message;
        error.hidden = false;
        input.setAttribute('aria-invalid', 'true');
      } else {
        leftover.push(e.message);
      }
    }
    if (leftover.length || !err.errors.length) {
      formError.textContent = leftover.length ? leftover.join('; ') : err.message;
      formError.hidden = false;
    }
  }

  const save = h('button', { type: 'submit', class: 'primary', text: 'Save' });
  const heading = item
    ? (item.source === 'profile' ? `Change “${item.rule.description || item.id}” (saved as a cloud override)` : `Edit “${item.rule.description || item.id}”`)
    : `New rule: ${TYPES[type].toLowerCase()}`;
  const form = h('form', { class: 'rule-form why-form', novalidate: true, dataset: { rule: item ? item.id : '' } },
    h('h3', { text: heading }), rows, formError,
    h('div', { class: 'actions' }, save, h('button', { type: 'button', text: 'Cancel', onclick: onCancel })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const body = { actuator: actuator.value, ...values(), enabled: enabled.checked, description: description.value.trim() };
    if (idInput) body.id = idInput.value.trim();
    save.disabled = true;
    try {
      await onSave(body);
    } catch (err) {
      if (err.errors) showErrors(err);
      else {
        formError.textContent = err.message;
        formError.hidden = false;
      }
    } finally {
      save.disabled = false;
    }
  });
  return form;
}

export function rulesSection(ctx, farmId, roomId, devices, canOperate) {
  const { api } = ctx;
  const rulesUrl = (rest = '') => inFarm(path`/api/rooms/${roomId}/automation` + rest, farmId);
  const store = roomAutomation(ctx, farmId, roomId);
  const actuators = devices.filter((d) => d.kind === 'actuator');
  const names = new Map(devices.map((d) => [d.id, d]));
  const list = h('ul', { class: 'items rules why-rules' });
  const status = h('p', { class: 'muted small why-reported', role: 'status' });
  const editor = h('div', { class: 'editor' });
  const message = h('p', { class: 'small', role: 'status' });
  const typeSelect = h('select', { id: 'new-rule-type', name: 'type' },
    Object.entries(TYPES).map(([t, text]) => h('option', { value: t, text })));
  const add = h('form', { class: 'inline why-add', hidden: !canOperate },
    h('label', { for: 'new-rule-type', text: 'New rule' }), typeSelect,
    h('button', { type: 'submit', text: 'Add rule' }));
  const el = h('section', { class: 'card panel rules-panel', 'aria-label': 'rules' },
    h('div', { class: 'row wrap' }, h('h2', { text: 'Automation rules' }), add),
    status, list, message, editor);
  let snapshot = null;
  let shownKey = null;

  const close = () => clear(editor);

  function openEditor(form) {
    clear(editor, form);
    const first = editor.querySelector('input, select');
    if (first) first.focus();
  }

  async function saved(text) {
    close();
    message.textContent = text;
    await store.load();
  }

  function edit(item) {
    openEditor(ruleForm({
      item, type: item.rule.type, actuators, onCancel: close,
      onSave: async (values) => {
        if (item.cloud_version !== null && item.cloud_version !== undefined) {
          await api.request('PATCH', rulesUrl(path`/${item.id}`), { changes: values, version: item.cloud_version });
          await saved(`Saved “${item.id}”; the edge runs it within seconds.`);
        } else {
          // A profile (or edge-file) rule: a cloud rule of the same id replaces it on the edge.
          const body = { ...item.rule, ...values, id: item.id, room_id: roomId, source: 'user' };
          await api.request('POST', rulesUrl(), body);
          await saved(`Saved “${item.id}” as a cloud override; the edge runs it within seconds.`);
        }
      },
    }));
  }

  add.addEventListener('submit', (event) => {
    event.preventDefault();
    const type = typeSelect.value;
    openEditor(ruleForm({
      item: null, type, actuators, onCancel: close,
      onSave: async (values) => {
        await api.request('POST', rulesUrl(), { type, room_id: roomId, ...values });
        await saved(`Added “${values.id}”; the edge runs it within seconds.`);
      },
    }));
  });

  async function remove(item) {
    const override = item.overrides;
    const question = override
      ? `Go back to the profile's rule for “${item.id}”?`
      : `Delete the rule “${item.id}”?`;
    if (!window.confirm(question)) return;
    try {
      await api.request('DELETE', rulesUrl(path`/${item.id}`));
      await saved(override ? `“${item.id}” follows the profile again.` : `Deleted “${item.id}”.`);
    } catch (err) {
      message.textContent = `Could not change “${item.id}”: ${err.message}`;
    }
  }

  function sourceBadge(item) {
    const key = item.overrides ? 'override' : item.source;
    const [text, title] = SOURCES[key];
    return h('span', { class: `badge why-source ${key}`, text, title, dataset: { source: key } });
  }

  function ruleItem(item) {
    const device = names.get(item.actuator);
    const deviceText = device ? `${device.name || device.id} (${actuatorLabel(device.actuator)})` : item.actuator;
    const isCloud = item.cloud_version !== null && item.cloud_version !== undefined;
    return h('li', { class: 'rule', dataset: { rule: item.id, source: item.overrides ? 'override' : item.source, applied: String(item.applied) } },
      h('div', { class: 'row wrap' },
        h('strong', { text: item.rule.description || item.id }),
        h('span', {}, sourceBadge(item),
          h('span', { class: item.enabled ? 'badge ok' : 'badge', text: item.enabled ? 'on' : 'off' }),
          item.applied ? null : h('span', { class: 'badge warning', text: 'waiting for the edge' }))),
      h('p', { class: 'small' }, h('span', { class: 'muted', text: `${deviceText}: ` }), summary(item.rule)),
      canOperate ? h('div', { class: 'actions' },
        h('button', { type: 'button', text: item.source === 'profile' ? 'Change' : 'Edit', 'aria-label': `${item.source === 'profile' ? 'Change' : 'Edit'} ${item.id}`, class: 'rule-edit', dataset: { rule: item.id }, onclick: () => edit(item) }),
        isCloud ? h('button', {
          type: 'button', text: item.overrides ? 'Back to profile' : 'Delete',
          'aria-label': `${item.overrides ? 'back to profile' : 'delete'} ${item.id}`, onclick: () => remove(item),
        }) : null) : null);
  }

  function render(state) {
    snapshot = state;
    el.dataset.reported = String(state.reported);
    el.dataset.count = String(state.rules.filter((r) => r.applied).length);
    status.textContent = state.reported
      ? `The edge runs ${state.rules.filter((r) => r.applied).length} rule(s) here; last report ${ago(state.reported_at)}.`
      : 'Waiting for the edge\'s first report; rules stored in the cloud are listed.';
    // Rebuilt only when the rules changed: a report every minute must not take the focus away.
    const key = JSON.stringify(state.rules);
    if (key === shownKey) return;
    shownKey = key;
    const sorted = [...state.rules].sort((a, b) => (a.actuator + a.id).localeCompare(b.actuator + b.id));
    clear(list, sorted.length ? sorted.map(ruleItem) : h('li', { class: 'muted', text: 'No rules for this room yet.' }));
  }

  const unsubscribe = store.subscribe(render);
  // "last report 3 min ago" stays true between reports (the list itself is left alone, so an
  // open editor or focus is not disturbed).
  const ticker = setInterval(() => {
    if (snapshot && snapshot.reported) {
      status.textContent = status.textContent.replace(/last report .*$/, `last report ${ago(snapshot.reported_at)}.`);
    }
  }, 15000);

  return {
    el,
    load: () => store.load(),
    dispose: () => { clearInterval(ticker); unsubscribe(); store.dispose(); },
  };
}
