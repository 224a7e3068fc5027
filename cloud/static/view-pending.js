// Devices waiting for adoption (set-up → Devices): nodes that knocked at an edge's broker with the
// farm's claim code, refused until adopted. An operator (or owner) adopts one into a room (as a sensor or an
// actuator of a role): it becomes a registered device, its credentials shown once; or dismisses
// it from the list. Everyone who can see the set-up sees the list.

import { inFarm, path } from './api.js';
import { h, clear, ago } from './dom.js';
import { field, select, showErrors, errorLine, busy, confirmIn } from './setup-forms.js';

// env: the set-up view's ({ api, farmId, farm, vocabulary }); rooms: the farm's rooms;
// onAdopted(device): shows the new device's credentials and reloads the device lists.
export function pendingSection(env, rooms, onAdopted) {
  const { api, farmId, vocabulary } = env;
  // Operators adopt and dismiss, as the API allows; viewers only see the list.
  const canAdopt = ['owner', 'operator'].includes(env.farm?.role);
  const list = h('ul', { class: 'items setup-list', 'aria-label': 'devices waiting for adoption' });
  const card = h('section', { class: 'card pending-devices', 'aria-labelledby': 'pending-h' },
    h('h2', { id: 'pending-h', text: 'Waiting for adoption' }),
    h('p', { class: 'muted small', text: 'Nodes flashed with this farm\'s claim code (shown on the edge\'s local page) ask to join here. Nothing they send is used until you adopt them into a room.' }),
    list);
  const kinds = [['sensor', 'Sensor node'],
    ...vocabulary.actuator_roles.map((r) => [`actuator:${r.id}`, `Actuator: ${r.label}`])];

  function item(p) {
    const li = h('li', { class: 'setup-item', dataset: { pending: p.device_id } });
    const detail = [p.client_id && p.client_id !== p.device_id ? `client ${p.client_id}` : null,
      `at ${p.address}`, `edge ${p.edge_id}`, `asked ${p.attempts}×`, `last ${ago(p.last_seen)}`,
      // Claim mode: once adopted, the edge hands it a password of its own (no re-flash).
      p.claim_mode ? 'claim mode: gets its password from the edge' : null]
      .filter(Boolean).join(' · ');
    const head = h('div', { class: 'grow' },
      h('span', { class: 'name', text: p.device_id }),
      h('p', { class: 'muted small', text: detail }));
    if (!canAdopt || !rooms.length) {
      clear(li, h('div', { class: 'row wrap' }, head));
      return li;
    }
    const roomF = field('Room', select(rooms.map((r) => [r.id, r.name || r.id])), { name: 'room_id' });
    const kindF = field('It is', select(kinds, 'sensor'), { name: 'kind' });
    const nameF = field('Name', h('input', { type: 'text', maxlength: '100', autocomplete: 'off' }), { name: 'name' });
    const general = errorLine();
    const adopt = h('button', { type: 'submit', class: 'primary', text: 'Adopt', 'aria-label': `Adopt ${p.device_id}` });
    const dismiss = h('button', {
      type: 'button', text: 'Dismiss', 'aria-label': `Dismiss ${p.device_id}`,
      onclick: async () => {
        const ok = await confirmIn(li, `Dismiss ${p.device_id}? It stays refused; the edge may still list it.`, 'Dismiss');
        if (!ok) return;
        try {
          await api.request('DELETE', path`/api/farms/${farmId}/pending-devices/${p.device_id}`);
          await load();
        } catch (err) {
          li.append(h('p', { class: 'error', role: 'alert', text: `Could not dismiss: ${err.message}` }));
        }
      },
    });
    const fields = [roomF, kindF, nameF];
    const form = h('form', { class: 'setup-form inline', 'aria-label': `Adopt ${p.device_id}` },
      roomF.el, kindF.el, nameF.el, general, h('div', { class: 'actions' }, adopt, dismiss));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const [kind, actuator] = kindF.input.value.split(':');
      const payload = { kind, name: nameF.input.value.trim() };
      if (actuator) payload.actuator = actuator;
      await busy(adopt, async () => {
        try {
          const made = await api.request('POST',
            inFarm(path`/api/rooms/${roomF.input.value}/pending-devices/${p.device_id}/adopt`, farmId), payload);
          await load();
          await onAdopted(made);
        } catch (err) {
          showErrors(fields, general, err);
        }
      });
    });
    clear(li, h('div', { class: 'row wrap' }, head), form);
    return li;
  }

  async function load() {
    const doc = await api.get(path`/api/farms/${farmId}/pending-devices`);
    clear(list, doc.items.length ? doc.items.map(item)
      : h('li', { class: 'muted', text: 'No device is waiting.' }));
    card.hidden = !doc.items.length && !canAdopt;
  }

  return { card, load };
}
