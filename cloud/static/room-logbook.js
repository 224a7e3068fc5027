// A room's grow logbook: batches, stage changes (from the web or the edge), notes and harvests
// in one timeline, newest first; operators add notes, start batches and log harvests; the
// yield prediction of the coming flush sits on top.

import { inFarm, path } from './api.js';
import { h, clear, stageLabel } from './dom.js';
import { when, day, relative, localInput, fromLocalInput } from './operate-format.js';

const KIND_WORDS = { batch: 'Batch', stage: 'Stage', note: 'Note', harvest: 'Harvest' };

function field(id, label, input, hint) {
  const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  input.id = id;
  input.setAttribute('aria-describedby', `${id}-error`);
  return { el: h('div', { class: 'field' }, h('label', { for: id, text: label }), input,
    hint ? h('p', { class: 'muted small', text: hint }) : null, error), input, error };
}

function entryItem(entry, remove) {
  const details = [];
  if (entry.kind === 'batch') {
    if (entry.substrate) details.push(`on ${entry.substrate}`);
    if (entry.spawn_date) details.push(`spawned ${day(entry.spawn_date)}`);
    if (entry.substrate_dry_kg) details.push(`${entry.substrate_dry_kg} kg dry substrate`);
  }
  const title = entry.kind === 'stage' ? `Stage: ${stageLabel(entry.stage)}` : entry.title;
  const text = entry.kind === 'stage'
    ? (entry.previous_stage ? `from ${stageLabel(entry.previous_stage)}` : 'room created')
    : entry.text;
  return h('li', { class: `log-entry ${entry.kind}`, dataset: { entry: entry.id, kind: entry.kind } },
    h('time', { class: 'at muted small', datetime: entry.at, title: relative(entry.at), text: when(entry.at) }),
    h('div', { class: 'body' },
      h('span', { class: `badge log-${entry.kind}`, text: KIND_WORDS[entry.kind] || entry.kind }),
      h('strong', { class: 'title', text: title }),
      details.length ? h('span', { class: 'muted', text: ` · ${details.join(' · ')}` }) : null,
      text ? h('p', { class: 'text', text }) : null,
      entry.by ? h('p', { class: 'muted small', text: `by ${entry.by}` }) : null,
      remove && entry.kind !== 'stage' ? removeControl(entry, remove) : null));
}

// "Remove" asks once more in place (no dialog), then removes.
function removeControl(entry, remove) {
  const what = (KIND_WORDS[entry.kind] || 'entry').toLowerCase();
  const box = h('div', { class: 'actions' });
  const first = () => clear(box, h('button', { type: 'button', class: 'quiet', text: `Remove ${what}`, onclick: () => {
    clear(box,
      h('span', { class: 'small', text: `Remove this ${what} for good?` }),
      h('button', { type: 'button', class: 'danger', text: 'Yes, remove', onclick: () => remove(entry) }),
      h('button', { type: 'button', text: 'Keep', onclick: () => { first(); box.querySelector('button').focus(); } }));
    box.querySelector('button').focus();
  } }));
  first();
  return box;
}

export function logbookSection(ctx, farmId, roomId, canOperate) {
  const { api, live } = ctx;
  const roomUrl = (rest) => inFarm(path`/api/rooms/${roomId}` + rest, farmId);
  const list = h('ul', { class: 'items logbook' });
  const status = h('p', { class: 'small', role: 'status' });
  const more = h('button', { type: 'button', text: 'Show older', hidden: true });
  const yieldBox = h('div', { class: 'yield-box' });
  const formBox = h('div', { class: 'log-forms' });
  const tabs = h('div', { class: 'actions log-tabs', hidden: !canOperate });
  const el = h('section', { class: 'card panel logbook-section', 'aria-label': 'grow logbook' },
    h('h2', { text: 'Grow logbook' }), yieldBox, tabs, formBox, status, list, more);
  let cursor = null;

  // ---- the yield prediction -------------------------------------------------------------------
  async function loadYield() {
    const [y, batches] = await Promise.all([
      api.get(roomUrl('/yield')),
      api.get(roomUrl('/logbook?kind=batch&order=desc&limit=1')),
    ]);
    const parts = [];
    const batch = batches.items[0];
    if (batch) {
      const since = batch.spawn_date ? new Date(`${batch.spawn_date}T00:00:00`) : new Date(batch.at);
      const days = Math.max(0, Math.floor((Date.now() - since.getTime()) / 86400000));
      parts.push(h('p', { class: 'current-batch' },
        h('strong', { text: `Current batch: ${batch.strain || batch.title}` }),
        h('span', { class: 'muted', text: `${batch.substrate ? ` on ${batch.substrate}` : ''} · ${batch.spawn_date ? `spawned ${day(batch.spawn_date)}` : `started ${when(batch.at)}`} · day ${days + 1}` })));
    }
    if (y.current) {
      const c = y.current;
      parts.push(h('p', {},
        h('strong', { text: `Flush ${c.flush}: about ${c.expected_kg.toFixed(1)} kg expected` }),
        h('span', { class: 'muted', text: ` (likely ${c.low_kg.toFixed(1)}–${c.high_kg.toFixed(1)} kg; predicted ${day(c.day)})` })));
      if (c.time_in_band !== null) {
        parts.push(h('p', { class: 'muted small', text: `Climate in band ${Math.round(c.time_in_band * 100)} % of the flush so far.` }));
      }
    } else if (y.substrate) {
      parts.push(h('p', { class: 'muted', text: 'Yield prediction: computed daily once the room is pinning or fruiting.' }));
    } else {
      parts.push(h('p', { class: 'muted', text: 'No yield prediction yet: start a batch with its dry substrate weight.' }));
    }
    if (y.substrate) {
      parts.push(h('p', { class: 'muted small', text: `Substrate: ${y.substrate.dry_mass_kg} kg dry, loaded ${when(y.substrate.loaded_at)}.` }));
    }
    const done = y.flushes.filter((f) => f.actual_kg);
    if (done.length) {
      parts.push(h('p', { class: 'small', text: `Harvested so far: ${done.map((f) => `flush ${f.flush} ${f.actual_kg.toFixed(1)} kg`).join(', ')}`
        + (y.mean_abs_error_pct !== null && y.mean_abs_error_pct !== undefined ? ` · predictions off by ${Math.round(y.mean_abs_error_pct)} % on average` : '') }));
    }
    clear(yieldBox, h('h3', { text: 'Yield' }), parts);
  }

  // ---- the timeline -----------------------------------------------------------------------------
  async function page(reset) {
    const base = roomUrl('/logbook?order=desc&limit=25');
    const answer = await api.get(reset || !cursor ? base : `${base}&cursor=${encodeURIComponent(cursor)}`);
    const rows = answer.items.map((e) => entryItem(e, canOperate ? remove : null));
    if (reset) clear(list, rows.length ? rows : h('li', { class: 'muted', text: 'Nothing logged yet.' }));
    else list.append(...rows);
    cursor = answer.next_cursor;
    more.hidden = !cursor;
  }

  async function remove(entry) {
    status.textContent = '';
    try {
      await api.request('DELETE', roomUrl(path`/logbook/${entry.id}`));
      status.textContent = `Removed: ${entry.title}.`;
      await Promise.all([page(true), loadYield()]);
    } catch (err) {
      status.textContent = `Could not remove: ${err.message}`;
    }
  }

  more.addEventListener('click', async () => {
    more.disabled = true;
    try { await page(false); } catch (err) { status.textContent = `Could not load more: ${err.message}`; }
    more.disabled = false;
  });

  // ---- the forms --------------------------------------------------------------------------------
  function form(kind, fields, submitText, send) {
    const el = h('form', { class: `log-form ${kind}`, novalidate: true },
      fields.map((f) => f.el), h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', text: submitText }),
        h('button', { type: 'button', text: 'Cancel', onclick: () => cancel() })));
    const cancel = () => { close(); openers[kind].focus(); };
    el.addEventListener('keydown', (event) => { if (event.key === 'Escape') cancel(); });
    el.addEventListener('submit', async (event) => {
      event.preventDefault();
      for (const f of fields) { f.error.hidden = true; f.input.removeAttribute('aria-invalid'); }
      const button = el.querySelector('button[type="submit"]');
      button.disabled = true;
      status.textContent = '';
      try {
        await send();
        close();
        status.textContent = `${submitText}: saved.`;
        await Promise.all([page(true), loadYield()]);
      } catch (err) {
        const byField = err.fields || {};
        let shown = false;
        for (const f of fields) {
          const message = byField[`body.${f.input.name}`];
          if (message) {
            f.error.textContent = message;
            f.error.hidden = false;
            f.input.setAttribute('aria-invalid', 'true');
            shown = true;
          }
        }
        status.textContent = shown ? 'Please check the highlighted fields.' : `Could not save: ${err.message}`;
      } finally {
        button.disabled = false;
      }
    });
    return el;
  }

  const input = (name, props = {}) => h('input', { name, ...props });
  const noteText = () => h('textarea', { name: 'text', rows: 3, maxlength: 4000 });

  function noteForm() {
    const text = field('log-note-text', 'Note', noteText());
    const at = field('log-note-at', 'When', input('at', { type: 'datetime-local', value: localInput(new Date()) }));
    const shown = at.input.value;
    return [form('note', [text, at], 'Add note', () => {
      const body = { kind: 'note', text: text.input.value.trim() };
      // Left at the minute it showed: now, to the second (the input has no seconds).
      if (at.input.value && at.input.value !== shown) body.at = fromLocalInput(at.input.value);
      return api.request('POST', roomUrl('/logbook'), body);
    }), text.input];
  }

  function batchForm() {
    const strain = field('log-batch-strain', 'Strain', input('strain', { maxlength: 120, required: true }));
    const substrate = field('log-batch-substrate', 'Substrate', input('substrate', { maxlength: 120, placeholder: 'e.g. straw, hardwood sawdust' }));
    const spawn = field('log-batch-spawn', 'Spawn date', input('spawn_date', { type: 'date', value: localInput(new Date()).slice(0, 10) }));
    const dry = field('log-batch-dry', 'Dry substrate (kg)', input('substrate_dry_kg', { type: 'number', min: 0, step: 0.1, inputmode: 'decimal' }),
      'Optional: starts the yield prediction for this batch.');
    const notes = field('log-batch-notes', 'Notes', noteText());
    return [form('batch', [strain, substrate, spawn, dry, notes], 'Start batch', () => {
      const body = { kind: 'batch', strain: strain.input.value.trim(), text: notes.input.value.trim() };
      if (substrate.input.value.trim()) body.substrate = substrate.input.value.trim();
      if (spawn.input.value) body.spawn_date = spawn.input.value;
      if (dry.input.value) body.substrate_dry_kg = Number(dry.input.value);
      return api.request('POST', roomUrl('/logbook'), body);
    }), strain.input];
  }

  function harvestForm() {
    const weight = field('log-harvest-weight', 'Fresh weight (kg)', input('weight_kg', { type: 'number', min: 0, step: 0.01, inputmode: 'decimal', required: true }));
    const flush = field('log-harvest-flush', 'Flush', input('flush', { type: 'number', min: 1, max: 20, step: 1 }), 'Optional: the coming flush by default.');
    const at = field('log-harvest-at', 'Harvested', input('harvested_at', { type: 'datetime-local', value: localInput(new Date()) }));
    const note = field('log-harvest-note', 'Note', input('note', { maxlength: 500 }));
    const shown = at.input.value;
    return [form('harvest', [weight, flush, at, note], 'Log harvest', () => {
      if (weight.input.value === '') {
        const err = new Error('no weight');
        err.fields = { 'body.weight_kg': 'Enter the fresh weight in kg.' };
        throw err;
      }
      const body = { weight_kg: weight.input.value === '' ? null : Number(weight.input.value), note: note.input.value.trim() };
      if (flush.input.value) body.flush = Number(flush.input.value);
      if (at.input.value && at.input.value !== shown) body.harvested_at = fromLocalInput(at.input.value);
      return api.request('POST', roomUrl('/harvests'), body);
    }), weight.input];
  }

  const makers = { note: noteForm, batch: batchForm, harvest: harvestForm };
  const openers = {};
  function close() {
    clear(formBox);
    for (const b of Object.values(openers)) b.setAttribute('aria-expanded', 'false');
  }
  function open(kind) {
    close();
    const [formEl, first] = makers[kind]();
    clear(formBox, formEl);
    openers[kind].setAttribute('aria-expanded', 'true');
    first.focus();
  }
  for (const [kind, label] of [['note', 'Add note'], ['batch', 'New batch'], ['harvest', 'Log harvest']]) {
    openers[kind] = h('button', { type: 'button', 'aria-expanded': 'false', 'aria-controls': 'log-forms', text: label,
      onclick: () => (openers[kind].getAttribute('aria-expanded') === 'true' ? close() : open(kind)) });
    tabs.append(openers[kind]);
  }
  formBox.id = 'log-forms';

  async function load() {
    try {
      await Promise.all([page(true), loadYield()]);
    } catch (err) {
      status.textContent = `Could not load the logbook: ${err.message}`;
    }
  }

  // A new stage (from here, another page or the edge) is a new entry.
  const onRoom = (event) => {
    if (event.detail.farm_id === farmId && event.detail.room_id === roomId) page(true).catch(() => {});
  };
  live.addEventListener('room', onRoom);
  return { el, load, dispose: () => live.removeEventListener('room', onRoom) };
}
