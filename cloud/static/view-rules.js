// A room's automation rules: the list, and an editor whose validation errors (the API's
// problem+json field list) are shown next to the field they are about.

import { inFarm, path } from './api.js';
import { h, clear, words, actuatorLabel, metricInfo } from './dom.js';

const COMMON_TAIL = [
  { name: 'enabled', kind: 'bool' },
  { name: 'description', kind: 'text' },
];
const FIELDS = {
  threshold: [
    { name: 'actuator', kind: 'actuator' },
    { name: 'metric', kind: 'text' },
    { name: 'on_below', kind: 'number', optional: true, hint: 'raise mode: on below…' },
    { name: 'off_above', kind: 'number', optional: true, hint: '…off above' },
    { name: 'on_above', kind: 'number', optional: true, hint: 'lower mode: on above…' },
    { name: 'off_below', kind: 'number', optional: true, hint: '…off below' },
    { name: 'for_s', kind: 'number', hint: 'seconds the condition must hold' },
    ...COMMON_TAIL,
  ],
  schedule: [
    { name: 'actuator', kind: 'actuator' },
    { name: 'windows', kind: 'json', optional: true, hint: '[{"start": "07:00", "end": "19:00"}]' },
    { name: 'cycle', kind: 'json', optional: true, hint: '{"on_s": 300, "every_s": 1800}' },
    ...COMMON_TAIL,
  ],
  pid: [
    { name: 'actuator', kind: 'actuator' },
    { name: 'metric', kind: 'text' },
    { name: 'setpoint', kind: 'number' },
    { name: 'kp', kind: 'number' },
    { name: 'ki', kind: 'number' },
    { name: 'kd', kind: 'number' },
    { name: 'period_s', kind: 'number' },
    { name: 'output_min', kind: 'number' },
    { name: 'output_max', kind: 'number' },
    { name: 'reverse', kind: 'bool' },
    ...COMMON_TAIL,
  ],
};
const NEW_RULE = {
  threshold: { metric: 'humidity_pct', on_below: 85, off_above: 90, for_s: 30 },
  schedule: { windows: [{ start: '07:00', end: '19:00' }] },
  pid: { metric: 'temperature_c', setpoint: 18, kp: 0.5 },
};

export function summary(rule) {
  if (rule.type === 'threshold') {
    return rule.on_below !== null && rule.on_below !== undefined
      ? `${metricInfo(rule.metric).label}: on below ${rule.on_below}, off above ${rule.off_above}`
      : `${metricInfo(rule.metric).label}: on above ${rule.on_above}, off below ${rule.off_below}`;
  }
  if (rule.type === 'schedule') {
    if (rule.windows) return `on ${rule.windows.map((w) => `${w.start}–${w.end}`).join(', ')}`;
    return `on ${rule.cycle.on_s} s every ${rule.cycle.every_s} s`;
  }
  return `${metricInfo(rule.metric).label} → ${rule.setpoint} (PID)`;
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

function parseValue(field, input) {
  if (field.kind === 'bool') return input.checked;
  const text = input.value.trim();
  if (field.kind === 'number') {
    if (text === '' && field.optional) return null;
    const n = Number(text);
    return text !== '' && Number.isFinite(n) ? n : text;  // not a number: let the API say why
  }
  if (field.kind === 'json') {
    if (text === '') return null;
    try {
      return JSON.parse(text);
    } catch (err) {
      return text;
    }
  }
  return text;
}

function shown(field, value) {
  if (value === null || value === undefined) return '';
  if (field.kind === 'json') return JSON.stringify(value);
  return String(value);
}

function ruleForm({ rule, type, actuators, onSave, onCancel }) {
  const fields = FIELDS[type];
  const inputs = new Map();
  const errors = new Map();
  const formError = h('p', { class: 'error', role: 'alert', hidden: true });
  const idInput = rule ? null : h('input', { id: 'rule-id', name: 'id', required: true, autocomplete: 'off' });
  const idError = h('p', { class: 'field-error', hidden: true });
  const rows = [];
  if (idInput) {
    errors.set('id', idError);
    inputs.set('id', idInput);
    rows.push(h('div', { class: 'field', dataset: { field: 'id' } },
      h('label', { for: 'rule-id', text: 'id' }), idInput, idError));
  }
  for (const field of fields) {
    const id = `rule-${field.name}`;
    const value = rule ? rule[field.name] : (NEW_RULE[type][field.name] ?? (field.name === 'enabled' ? true : null));
    let input;
    if (field.kind === 'bool') {
      input = h('input', { id, name: field.name, type: 'checkbox', checked: Boolean(value) });
    } else if (field.kind === 'actuator') {
      input = h('select', { id, name: field.name },
        actuators.map((a) => h('option', { value: a.id, text: `${a.name || a.id} (${actuatorLabel(a.actuator)})` })));
      input.value = value || (actuators[0] && actuators[0].id) || '';
    } else {
      input = h('input', {
        id, name: field.name, type: 'text', value: shown(field, value), autocomplete: 'off',
        inputmode: field.kind === 'number' ? 'decimal' : undefined, placeholder: field.hint,
      });
    }
    const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
    input.setAttribute('aria-describedby', `${id}-error`);
    inputs.set(field.name, input);
    errors.set(field.name, error);
    rows.push(h('div', { class: 'field', dataset: { field: field.name } },
      h('label', { for: id, text: words(field.name) }), input, error));
  }

  function clearErrors() {
    formError.hidden = true;
    for (const [name, p] of errors) {
      p.hidden = true;
      p.textContent = '';
      inputs.get(name).removeAttribute('aria-invalid');
    }
  }

  function showErrors(err) {
    const names = [...errors.keys()];
    const leftover = [];
    for (const e of err.errors) {
      const name = fieldFor(e, names);
      if (name) {
        const p = errors.get(name);
        p.textContent = p.textContent ? `${p.textContent}; ${e.message}` : e.message;
        p.hidden = false;
        inputs.get(name).setAttribute('aria-invalid', 'true');
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
  const form = h('form', { class: 'rule-form', novalidate: true, dataset: { rule: rule ? rule.id : '' } },
    h('h3', { text: rule ? `Edit ${rule.id}` : `New ${type} rule` }),
    rows, formError,
    h('div', { class: 'actions' }, save, h('button', { type: 'button', text: 'Cancel', onclick: onCancel })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const values = {};
    for (const field of fields) values[field.name] = parseValue(field, inputs.get(field.name));
    if (idInput) values.id = idInput.value.trim();
    save.disabled = true;
    try {
      await onSave(values);
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

export function rulesSection({ api }, farmId, roomId, devices, canOperate) {
  const rulesUrl = (rest = '') => inFarm(path`/api/rooms/${roomId}/automation` + rest, farmId);
  const actuators = devices.filter((d) => d.kind === 'actuator');
  const list = h('ul', { class: 'items rules' });
  const editor = h('div', { class: 'editor' });
  const typeSelect = h('select', { 'aria-label': 'new rule type' },
    Object.keys(FIELDS).map((t) => h('option', { value: t, text: t })));
  const add = h('form', { class: 'inline', hidden: !canOperate }, typeSelect,
    h('button', { type: 'submit', text: 'New rule' }));
  const el = h('section', { class: 'card panel rules-panel', 'aria-label': 'rules' },
    h('div', { class: 'row' }, h('h2', { text: 'Automation rules' }), add), list, editor);
  let rules = [];

  function close() {
    clear(editor);
  }

  function edit(item) {
    const rule = item.rule;
    clear(editor, ruleForm({
      rule, type: rule.type, actuators, onCancel: close,
      onSave: async (values) => {
        const changes = {};
        for (const [name, value] of Object.entries(values)) {
          if (JSON.stringify(value) !== JSON.stringify(rule[name] ?? null)) changes[name] = value;
        }
        if (!Object.keys(changes).length) { close(); return; }
        await api.request('PATCH', rulesUrl(path`/${rule.id}`), { changes, version: item.version });
        close();
        await load();
      },
    }));
    editor.querySelector('input, select').focus();
  }

  add.addEventListener('submit', (event) => {
    event.preventDefault();
    const type = typeSelect.value;
    clear(editor, ruleForm({
      rule: null, type, actuators, onCancel: close,
      onSave: async (values) => {
        const body = { type, room_id: roomId };
        for (const [name, value] of Object.entries(values)) if (value !== null) body[name] = value;
        await api.request('POST', rulesUrl(), body);
        close();
        await load();
      },
    }));
  });

  async function remove(item) {
    if (!window.confirm(`Delete rule ${item.id}?`)) return;
    await api.request('DELETE', rulesUrl(path`/${item.id}`));
    await load();
  }

  function render() {
    clear(list, rules.length ? rules.map((item) => h('li', { class: 'rule', dataset: { rule: item.id } },
      h('div', { class: 'row' },
        h('span', {}, h('strong', { text: item.id }), h('span', { class: 'muted small', text: ` ${item.rule.type} → ${item.rule.actuator}` })),
        h('span', { class: item.rule.enabled ? 'badge ok' : 'badge', text: item.rule.enabled ? 'enabled' : 'disabled' })),
      h('p', { class: 'small', text: summary(item.rule) }),
      canOperate ? h('div', { class: 'actions' },
        h('button', { type: 'button', text: 'Edit', 'aria-label': `edit ${item.id}`, onclick: () => edit(item) }),
        h('button', { type: 'button', text: 'Delete', 'aria-label': `delete ${item.id}`, onclick: () => remove(item) })) : null))
      : h('li', { class: 'muted', text: 'No rules stored in the cloud for this room.' }));
  }

  async function load() {
    rules = await api.all(rulesUrl('?limit=100'), 5);
    render();
  }

  return { el, load, dispose: () => {} };
}
