// Form pieces for the set-up and account pages: labelled fields whose API errors (problem+json
// `errors[].field`, e.g. "body.mqtt_host") show next to the field, copyable "shown once" secrets,
// confirmations in place of window.confirm, and readable dates ("6 Dec 14:05", "in 3 d").

import { h, clear } from './dom.js';

let serial = 0;
export const uid = (name) => `sf-${name}-${++serial}`;

// A labelled field: { el, input, error }. `input` is an element or a function(id) → element.
export function field(label, input, { hint, name } = {}) {
  const id = uid(name || 'f');
  const control = typeof input === 'function' ? input(id) : input;
  control.id = id;
  if (name) control.name = name;
  const error = h('p', { class: 'field-error', id: `${id}-error`, role: 'alert', hidden: true });
  const hintEl = hint ? h('p', { class: 'hint small muted', id: `${id}-hint`, text: hint }) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  const el = h('div', { class: 'field', dataset: { field: name || '' } },
    h('label', { for: id, text: label }), control, hintEl, error);
  return { el, input: control, error, name };
}

export function checkbox(label, { name, checked } = {}) {
  const id = uid(name || 'c');
  const input = h('input', { type: 'checkbox', id, name, checked });
  const error = h('p', { class: 'field-error', id: `${id}-error`, role: 'alert', hidden: true });
  const el = h('div', { class: 'field check', dataset: { field: name || '' } },
    input, h('label', { for: id, text: label }), error);
  return { el, input, error, name };
}

export function select(options, value) {
  return h('select', {}, options.map(([v, label]) =>
    h('option', { value: v, text: label, selected: v === value ? true : null })));
}

// Clears the fields' errors; then, for an ApiError, puts each message beside the field whose
// name is the error's last path segment (else in the form's general error line).
export function showErrors(fields, general, err) {
  for (const f of fields) {
    f.error.hidden = true;
    f.error.textContent = '';
    f.input.removeAttribute('aria-invalid');
  }
  general.hidden = true;
  if (!err) return;
  const left = [];
  for (const e of (err.errors && err.errors.length ? err.errors : [])) {
    const segments = String(e.field || '').split('.');
    const f = fields.find((x) => x.name && segments.includes(x.name));
    if (f) {
      f.error.textContent = e.message;
      f.error.hidden = false;
      f.input.setAttribute('aria-invalid', 'true');
      f.input.setAttribute('aria-errormessage', f.error.id);
    } else left.push(e.message);
  }
  if (left.length || !(err.errors && err.errors.length)) {
    general.textContent = left.length ? left.join('; ') : err.message;
    general.hidden = false;
  }
}

export const errorLine = () => h('p', { class: 'error', role: 'alert', hidden: true });

// Runs `work` with the button busy; errors go to `general` (or the fields) instead of the console.
export async function busy(button, work) {
  button.disabled = true;
  try {
    return await work();
  } finally {
    button.disabled = false;
  }
}

// Text shown once (a password, a token, a command) with a copy button.
export function secret(label, text, { multiline = false, name } = {}) {
  const id = uid(name || 's');
  const status = h('span', { class: 'small muted copied', role: 'status', 'aria-live': 'polite' });
  const code = multiline
    ? h('pre', { class: 'secret', id, tabindex: '0', dataset: { secret: name || '' } }, h('code', { text }))
    : h('code', { class: 'secret', id, dataset: { secret: name || '' }, text });
  const copy = h('button', {
    type: 'button', class: 'copy', text: 'Copy', 'aria-label': `Copy ${label.toLowerCase()}`,
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        status.textContent = 'copied';
      } catch (err) {
        // No clipboard (plain http on a LAN address): select the text for a manual copy.
        const range = document.createRange();
        range.selectNodeContents(code);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        status.textContent = 'selected: press Ctrl+C';
      }
    },
  });
  return h('div', { class: 'secret-row' },
    h('div', { class: 'row' }, h('span', { class: 'secret-label', id: `${id}-label`, text: label }),
      h('span', { class: 'row' }, status, copy)),
    code);
}

// Replaces `row`'s content with a question and two buttons until answered; resolves true/false.
export function confirmIn(row, question, yesText) {
  const before = [...row.childNodes];
  return new Promise((resolve) => {
    const done = (answer) => {
      clear(row, before);
      resolve(answer);
    };
    const yes = h('button', { type: 'button', class: 'danger', text: yesText, onclick: () => done(true) });
    const no = h('button', { type: 'button', text: 'Cancel', onclick: () => done(false) });
    clear(row, h('div', { class: 'confirm', role: 'group', 'aria-label': question },
      h('p', { text: question }), h('div', { class: 'actions' }, yes, no)));
    no.focus();
  });
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const pad = (n) => String(n).padStart(2, '0');

export function shortDate(when, { time = true } = {}) {
  if (!when) return '–';
  const d = new Date(when);
  const day = `${d.getDate()} ${MONTHS[d.getMonth()]}`;
  const year = d.getFullYear() !== new Date().getFullYear() ? ` ${d.getFullYear()}` : '';
  return time ? `${day}${year} ${pad(d.getHours())}:${pad(d.getMinutes())}` : `${day}${year}`;
}

export function fromNow(when) {
  const s = Math.round((new Date(when).getTime() - Date.now()) / 1000);
  if (s <= 0) return 'expired';
  if (s < 5400) return `in ${Math.max(1, Math.round(s / 60))} min`;
  if (s < 129600) return `in ${Math.round(s / 3600)} h`;
  return `in ${Math.round(s / 86400)} d`;
}

// A date input's value (local midnight) as an ISO time with its offset; '' → null.
export function dateToIso(value) {
  if (!value) return null;
  return new Date(`${value}T00:00`).toISOString();
}

export function isoToDate(when) {
  const d = new Date(when);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

export function timezones(current) {
  let zones = [];
  try {
    zones = Intl.supportedValuesOf('timeZone');
  } catch (err) {
    zones = [];
  }
  if (!zones.includes('UTC')) zones = ['UTC', ...zones];
  if (current && !zones.includes(current)) zones = [current, ...zones];
  return zones.map((z) => [z, z.replaceAll('_', ' ')]);
}

export const browserZone = () => Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
