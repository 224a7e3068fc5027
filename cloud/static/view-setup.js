// A farm's set-up, from the web: rooms (species, stage, stage start), devices (sensor or actuator,
// safety limits) with their MQTT credentials and QR code shown once, edge gateways with the
// command that registers them, and members with roles, room grants and invitations.
// Routed at #/farm/{farm}/setup/{rooms|devices|edges|members}.

import { inFarm, path } from './api.js';
import { h, clear, append, ago, speciesLabel, stageLabel, actuatorLabel } from './dom.js';
import { saveText } from './esphome-download.js';
import {
  field, checkbox, select, showErrors, errorLine, busy, secret, confirmIn, shortDate, fromNow,
  dateToIso, isoToDate,
} from './setup-forms.js';
import { pendingSection } from './view-pending.js';

const TABS = [
  ['rooms', 'Rooms'],
  ['devices', 'Devices'],
  ['edges', 'Edge gateways'],
  ['members', 'Members'],
];
const ROLES = [['viewer', 'Viewer'], ['operator', 'Operator'], ['owner', 'Owner']];
const ROLE_HINT = 'viewers see rooms, charts and alarms; operators also switch devices and edit rules; owners also set up the farm and its members';
const ROLE_NAMES = { owner: 'Owner', operator: 'Operator', viewer: 'Viewer' };

export async function setupView(ctx, farmId, rest = []) {
  const { api, main, setCrumbs } = ctx;
  const tab = TABS.some(([id]) => id === rest[0]) ? rest[0] : 'rooms';
  const [farm, vocabulary] = await Promise.all([
    api.get(path`/api/farms/${farmId}`),
    api.get('/api/vocabulary'),
  ]);
  const farmHref = `#/farm/${encodeURIComponent(farmId)}`;
  setCrumbs({ label: 'Farms', href: '#/' }, { label: farm.name || farm.id, href: farmHref },
    { label: 'Set-up' });
  const owner = farm.role === 'owner';
  const body = h('div', { class: 'setup-body' });
  clear(main,
    h('div', { class: 'setup' },
      h('h1', { text: `Set up ${farm.name || farm.id}` }),
      h('nav', { class: 'tabs', 'aria-label': 'Set-up sections' },
        TABS.map(([id, label]) => h('a', {
          href: `${farmHref}/setup/${id}`, text: label, 'aria-current': id === tab ? 'page' : null,
        }))),
      owner ? null : h('p', { class: 'setup-note', text: 'Only the farm\'s owners can change its set-up; you can look.' }),
      body));
  const env = { ...ctx, farmId, farm, owner, vocabulary, body };
  const sections = { rooms: roomsSection, devices: devicesSection, edges: edgesSection, members: membersSection };
  await sections[tab](env);
  return null;
}

// A card shown once comes into view with its heading focused (screen readers read it out).
function reveal(slot) {
  const heading = slot.querySelector('h2');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
  }
  slot.scrollIntoView({ block: 'start' });
}

// ---- rooms -------------------------------------------------------------------------------------

function roomFields(vocabulary, room) {
  const today = isoToDate(new Date());
  return [
    field('Name', h('input', { type: 'text', maxlength: '100', required: true, value: room ? room.name : '', autocomplete: 'off' }),
      { name: 'name', hint: 'e.g. "Fruiting room 1"' }),
    field('Species', select(vocabulary.species.map((s) => [s.id, s.label]), room ? room.species : vocabulary.species[0].id),
      { name: 'species' }),
    field('Grow stage', select(vocabulary.stages.map((s) => [s.id, s.label]), room ? room.stage : vocabulary.stages[0].id),
      { name: 'stage' }),
    field('Stage started on', h('input', { type: 'date', value: room ? isoToDate(room.stage_started) : today, max: today }),
      { name: 'stage_started', hint: 'the day the current stage began (its bands and day count start there)' }),
  ];
}

function roomBody(fields, room) {
  const [name, species, stage, started] = fields.map((f) => f.input.value.trim());
  const out = { name, species, stage };
  const iso = dateToIso(started);
  if (!room || iso === null || isoToDate(room.stage_started) !== started) out.stage_started = iso;
  if (out.stage_started === null) delete out.stage_started;
  return out;
}

async function roomsSection(env) {
  const { api, farmId, owner, vocabulary, body } = env;
  const list = h('ul', { class: 'items setup-list', 'aria-label': 'rooms' });

  // The farm's edges (owners only may list them): each room is served by one of them.
  let edges = [];

  async function load() {
    const [rooms, found] = await Promise.all([
      api.all(path`/api/farms/${farmId}/rooms?limit=100`),
      owner ? api.all(path`/api/farms/${farmId}/edges?limit=100`) : Promise.resolve([]),
    ]);
    edges = found;
    clear(list, rooms.length ? rooms.map(roomItem)
      : h('li', { class: 'muted', text: 'No rooms yet: add the first one below.' }));
  }

  // Which edge serves the room: its own, or (unassigned) the farm's only edge.
  function servedBy(room) {
    if (room.edge_id) return edges.find((e) => e.id === room.edge_id) || { id: room.edge_id };
    return edges.length === 1 ? edges[0] : null;
  }

  function roomItem(room) {
    const li = h('li', { class: 'setup-item', dataset: { room: room.id } });
    const edge = servedBy(room);
    const show = () => clear(li,
      h('div', { class: 'row wrap' },
        h('div', { class: 'grow' },
          h('a', { class: 'name', href: `#/farm/${encodeURIComponent(farmId)}/room/${encodeURIComponent(room.id)}`, text: room.name || room.id }),
          h('p', { class: 'muted small', text: `${speciesLabel(room.species)} · ${stageLabel(room.stage)} since ${shortDate(room.stage_started, { time: false })}` }),
          edges.length ? h('p', { class: 'small', dataset: { roomEdge: edge ? edge.id : '' }, text: edge ? `Edge: ${edge.name || edge.id}` : 'Edge: none — no edge runs this room until you choose one' }) : null),
        owner ? h('div', { class: 'actions' },
          h('button', { type: 'button', text: 'Edit', 'aria-label': `Edit room ${room.name || room.id}`, onclick: edit }),
          edges.length > 1 || (edges.length === 1 && !edge) ? h('button', { type: 'button', text: 'Move', 'aria-label': `Move room ${room.name || room.id} to another edge`, onclick: move }) : null,
          h('button', { type: 'button', class: 'danger', text: 'Delete', 'aria-label': `Delete room ${room.name || room.id}`, onclick: remove }))
          : null));

    // Choose the edge that runs the room. Readings the old edge took still upload; commands not
    // yet delivered go to the new one.
    function move() {
      const choice = field('Edge gateway', select([['', 'None (unassigned)'], ...edges.map((e) => [e.id, e.name || e.id])], edge ? edge.id : ''),
        { name: 'edge_id', hint: 'only this edge runs the room\'s automation and accepts its devices' });
      const general = errorLine();
      const save = h('button', { type: 'submit', class: 'primary', text: 'Move room' });
      const form = h('form', { class: 'setup-form', 'aria-label': `Move room ${room.name || room.id}` },
        h('h3', { text: `Edge for ${room.name || room.id}` }), choice.el, general,
        h('div', { class: 'actions' }, save, h('button', { type: 'button', text: 'Cancel', onclick: show })));
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        await busy(save, async () => {
          try {
            await api.request('PUT', inFarm(path`/api/rooms/${room.id}/edge`, farmId), { edge_id: choice.input.value || null });
            await load();
          } catch (err) {
            showErrors([choice], general, err);
          }
        });
      });
      clear(li, form);
      choice.input.focus();
    }

    function edit() {
      const fields = roomFields(vocabulary, room);
      // A new stage starts today unless the grower says when it did.
      fields[2].input.addEventListener('change', () => {
        fields[3].input.value = fields[2].input.value === room.stage ? isoToDate(room.stage_started) : isoToDate(new Date());
      });
      const general = errorLine();
      const save = h('button', { type: 'submit', class: 'primary', text: 'Save room' });
      const form = h('form', { class: 'setup-form', 'aria-label': `Edit room ${room.name || room.id}` },
        h('h3', { text: `Edit ${room.name || room.id}` }), fields.map((f) => f.el), general,
        h('div', { class: 'actions' }, save, h('button', { type: 'button', text: 'Cancel', onclick: show })));
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        await busy(save, async () => {
          try {
            room = await api.request('PATCH', inFarm(path`/api/rooms/${room.id}`, farmId), roomBody(fields, room));
            show();
          } catch (err) {
            showErrors(fields, general, err);
          }
        });
      });
      clear(li, form);
      fields[0].input.focus();
    }

    async function remove() {
      const ok = await confirmIn(li, `Delete ${room.name || room.id} with its devices, rules and commands? Its readings stay in the history.`, 'Delete room');
      if (!ok) return;
      try {
        await api.request('DELETE', inFarm(path`/api/rooms/${room.id}`, farmId));
        await load();
      } catch (err) {
        li.append(h('p', { class: 'error', role: 'alert', text: `Could not delete: ${err.message}` }));
      }
    }

    show();
    return li;
  }

  const fields = roomFields(vocabulary, null);
  // With several edges, a new room is given one here (else no edge runs it until moved).
  const edgeSlot = h('div');
  let edgeField = null;
  const general = errorLine();
  const add = h('button', { type: 'submit', class: 'primary', text: 'Add room' });
  const form = h('form', { class: 'setup-form', 'aria-labelledby': 'add-room-h' },
    h('h2', { id: 'add-room-h', text: 'Add a room' }), fields.map((f) => f.el), edgeSlot, general,
    h('div', { class: 'actions' }, add));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    await busy(add, async () => {
      const all = edgeField ? [...fields, edgeField] : fields;
      try {
        const payload = roomBody(fields, null);
        if (edgeField && edgeField.input.value) payload.edge_id = edgeField.input.value;
        await api.request('POST', path`/api/farms/${farmId}/rooms`, payload);
        fields[0].input.value = '';
        showErrors(all, general, null);
        await load();
      } catch (err) {
        showErrors(all, general, err);
      }
    });
  });
  clear(body,
    h('section', { class: 'card', 'aria-labelledby': 'rooms-h' }, h('h2', { id: 'rooms-h', text: 'Rooms' }), list),
    owner ? h('section', { class: 'card' }, form) : null);
  await load();
  if (edges.length > 1) {
    edgeField = field('Edge gateway', select([['', 'None yet'], ...edges.map((e) => [e.id, e.name || e.id])], edges[0].id),
      { name: 'edge_id', hint: 'the edge on the site of this room: it runs the room\'s automation' });
    clear(edgeSlot, edgeField.el);
  }
}

// ---- devices -----------------------------------------------------------------------------------

async function devicesSection(env) {
  const { api, farmId, owner, vocabulary, body } = env;
  const rooms = await api.all(path`/api/farms/${farmId}/rooms?limit=100`);
  const network = await api.get(path`/api/farms/${farmId}/device-network`);
  const lists = h('div', { class: 'device-rooms' });
  const shown = h('div', { class: 'credentials-slot', 'aria-live': 'polite' });

  async function loadDevices() {
    const all = await Promise.all(rooms.map((room) =>
      api.all(inFarm(path`/api/rooms/${room.id}/devices?limit=100`, farmId))));
    clear(lists, rooms.length ? rooms.map((room, i) => h('section', { class: 'card', dataset: { room: room.id } },
      h('h3', { text: room.name || room.id }),
      h('ul', { class: 'items setup-list', 'aria-label': `devices of ${room.name || room.id}` },
        all[i].length ? all[i].map((d) => deviceItem(room, d))
          : h('li', { class: 'muted', text: 'No devices in this room yet.' }))))
      : h('p', { class: 'muted' }, 'Add a room first: ', h('a', { href: `#/farm/${encodeURIComponent(farmId)}/setup/rooms`, text: 'Rooms' })));
  }

  function deviceItem(room, device) {
    const what = device.kind === 'actuator' ? actuatorLabel(device.actuator) : 'Sensor';
    const li = h('li', { class: 'setup-item', dataset: { device: device.id } });
    const rename = () => {
      const nameF = field('Name', h('input', { type: 'text', maxlength: '100', value: device.name, autocomplete: 'off' }), { name: 'name' });
      const general = errorLine();
      const save = h('button', { type: 'submit', class: 'primary', text: 'Save name' });
      const form = h('form', { class: 'setup-form', 'aria-label': `Rename ${device.name || device.id}` },
        nameF.el, general, h('div', { class: 'actions' }, save,
          h('button', { type: 'button', text: 'Cancel', onclick: () => li.replaceWith(deviceItem(room, device)) })));
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        await busy(save, async () => {
          try {
            const saved = await api.request('PATCH', inFarm(path`/api/devices/${device.id}`, farmId), { name: nameF.input.value.trim() });
            li.replaceWith(deviceItem(room, { ...device, ...saved }));
          } catch (err) {
            showErrors([nameF], general, err);
          }
        });
      });
      clear(li, form);
      nameF.input.focus();
    };
    append(li, [
      h('div', { class: 'row wrap' },
        h('div', { class: 'grow' },
          h('span', { class: 'name', text: device.name || device.id }),
          h('p', { class: 'muted small', text: `${what} · user name ${device.id} · last heard ${ago(device.last_seen)}`
            + (device.firmware ? ` · firmware ${device.firmware}` : '') }),
          device.safety ? h('p', { class: 'muted small', text: safetyText(device.safety) }) : null),
        owner ? h('div', { class: 'actions' }, h('button', {
          type: 'button', text: 'Rename', 'aria-label': `Rename device ${device.name || device.id}`, onclick: rename,
        }), h('button', {
          type: 'button', class: 'danger', text: 'Delete', 'aria-label': `Delete device ${device.name || device.id}`,
          onclick: async () => {
            const ok = await confirmIn(li, `Delete ${device.name || device.id}? It can no longer log in to the edge; its readings stay in the history.`, 'Delete device');
            if (!ok) return;
            try {
              await api.request('DELETE', inFarm(path`/api/devices/${device.id}`, farmId));
              await loadDevices();
            } catch (err) {
              li.append(h('p', { class: 'error', role: 'alert', text: `Could not delete: ${err.message}` }));
            }
          },
        })) : null)]);
    return li;
  }

  // Where devices reach the broker: asked once per farm, carried by every new device's QR code.
  const netFields = [
    field('Edge address on the farm network', h('input', { type: 'text', value: network.mqtt_host || '', placeholder: '192.168.1.20 or smartfarm.local', autocomplete: 'off' }),
      { name: 'mqtt_host', hint: 'the Raspberry Pi running the edge, as the devices reach it' }),
    field('MQTT port', h('input', { type: 'number', min: '1', max: '65535', value: network.mqtt_port }),
      { name: 'mqtt_port', hint: '1884 for the edge\'s built-in broker, 8883 with TLS' }),
  ];
  const tls = checkbox('Devices connect with TLS', { name: 'tls', checked: network.tls });
  const netGeneral = errorLine();
  const netSaved = h('p', { class: 'small muted', role: 'status' });
  const netSave = h('button', { type: 'submit', class: 'primary', text: 'Save address' });
  const netForm = h('form', { class: 'setup-form', 'aria-labelledby': 'net-h' },
    h('h2', { id: 'net-h', text: 'Where devices find the edge' }),
    h('p', { class: 'muted small', text: 'New devices get this address with their credentials and QR code.' }),
    netFields.map((f) => f.el), tls.el, netGeneral, h('div', { class: 'actions' }, netSave, netSaved));
  netForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    await busy(netSave, async () => {
      try {
        const port = Number(netFields[1].input.value);
        const saved = await api.request('PUT', path`/api/farms/${farmId}/device-network`, {
          mqtt_host: netFields[0].input.value.trim(),
          mqtt_port: Number.isInteger(port) && netFields[1].input.value !== '' ? port : netFields[1].input.value,
          tls: tls.input.checked,
        });
        showErrors([...netFields, tls], netGeneral, null);
        netSaved.textContent = `Saved: devices connect to ${saved.mqtt_host}:${saved.mqtt_port}`;
      } catch (err) {
        showErrors([...netFields, tls], netGeneral, err);
      }
    });
  });

  // A new device.
  const roomF = field('Room', select(rooms.map((r) => [r.id, r.name || r.id])), { name: 'room' });
  const kindF = field('Kind', select([['sensor', 'Sensor node'], ['actuator', 'Actuator (relay)']], 'sensor'), { name: 'kind' });
  const roleF = field('Switches', select(vocabulary.actuator_roles.map((r) => [r.id, r.label]), vocabulary.actuator_roles[0].id), { name: 'actuator' });
  const nameF = field('Name', h('input', { type: 'text', maxlength: '100', autocomplete: 'off' }), { name: 'name', hint: 'what you call it, e.g. "Humidifier left"' });
  const idF = field('User name (optional)', h('input', { type: 'text', maxlength: '64', autocomplete: 'off', placeholder: 'generated' }),
    { name: 'id', hint: 'letters, digits, - and _; the device logs in with it' });
  const minutes = (label, name, hint) => field(label, h('input', { type: 'number', min: '0', step: 'any', inputmode: 'decimal' }), { name, hint });
  const safetyFields = [
    minutes('Minimum on (min)', 'min_on_s', 'once on, stays on at least this long'),
    minutes('Minimum off (min)', 'min_off_s', 'once off, stays off at least this long'),
    minutes('Maximum on (min)', 'max_on_s', 'switched off after running this long'),
    field('Maximum duty (%)', h('input', { type: 'number', min: '1', max: '100', step: 'any', inputmode: 'decimal' }),
      { name: 'max_duty', hint: 'of any hour spent on' }),
  ];
  const safety = h('fieldset', { class: 'safety', hidden: true },
    h('legend', { text: 'Safety limits (optional)' }),
    h('p', { class: 'muted small', text: 'The edge keeps to these whatever a rule or a person asks.' }),
    safetyFields.map((f) => f.el));
  const devFields = [roomF, kindF, roleF, nameF, idF, ...safetyFields];
  const devGeneral = errorLine();
  const addDev = h('button', { type: 'submit', class: 'primary', text: 'Add device' });
  const syncKind = () => {
    const actuator = kindF.input.value === 'actuator';
    roleF.el.hidden = !actuator;
    safety.hidden = !actuator;
  };
  kindF.input.addEventListener('change', syncKind);
  syncKind();
  const devForm = h('form', { class: 'setup-form', 'aria-labelledby': 'add-dev-h' },
    h('h2', { id: 'add-dev-h', text: 'Add a device' }),
    roomF.el, kindF.el, roleF.el, nameF.el, idF.el, safety, devGeneral, h('div', { class: 'actions' }, addDev));
  devForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const kind = kindF.input.value;
    const payload = { kind, name: nameF.input.value.trim() };
    if (idF.input.value.trim()) payload.id = idF.input.value.trim();
    if (kind === 'actuator') {
      payload.actuator = roleF.input.value;
      const limits = {};
      for (const f of safetyFields) {
        const text = f.input.value.trim();
        if (text === '') continue;
        const n = Number(text);
        if (!Number.isFinite(n)) limits[f.name] = text;  // the API names what is wrong
        else if (f.name === 'max_duty') limits[f.name] = n / 100;
        else limits[f.name] = n * 60;
      }
      // Sent only when set: an API without device safety limits refuses the field.
      if (Object.keys(limits).length) payload.safety = limits;
    }
    await busy(addDev, async () => {
      try {
        const room = roomF.input.value;
        const made = await api.request('POST', inFarm(path`/api/rooms/${room}/devices`, farmId), payload);
        showErrors(devFields, devGeneral, null);
        nameF.input.value = '';
        idF.input.value = '';
        for (const f of safetyFields) f.input.value = '';
        clear(shown, credentialsCard(made, () => clear(shown)));
        reveal(shown);
        await loadDevices();
      } catch (err) {
        showErrors(devFields, devGeneral, err);
      }
    });
  });

  // Nodes that asked to join with the farm's claim code (view-pending.js).
  const pending = pendingSection(env, rooms, async (made) => {
    clear(shown, credentialsCard(made, () => clear(shown)));
    reveal(shown);
    await loadDevices();
  });
  clear(body,
    shown,
    pending.card,
    owner ? h('section', { class: 'card' }, netForm) : null,
    owner && rooms.length ? h('section', { class: 'card' }, devForm) : null,
    h('h2', { text: 'Devices by room' }),
    lists);
  await Promise.all([loadDevices(), pending.load()]);
}

function safetyText(s) {
  const parts = [];
  if (s.min_on_s) parts.push(`on ≥ ${s.min_on_s / 60} min`);
  if (s.min_off_s) parts.push(`off ≥ ${s.min_off_s / 60} min`);
  if (s.max_on_s) parts.push(`on ≤ ${s.max_on_s / 60} min`);
  if (s.max_duty) parts.push(`≤ ${Math.round(s.max_duty * 100)} % of an hour`);
  return parts.length ? `Safety: ${parts.join(', ')}` : '';
}

// The credentials of a device just added: shown this once (only a hash is kept).
export function credentialsCard(device, onDone) {
  const m = device.mqtt;
  const label = device.name || device.id;
  const broker = m.broker.host
    ? `${m.broker.host}:${m.broker.port}${m.broker.tls ? ' (TLS)' : ''}`
    : `port ${m.broker.port} on the edge (set the edge's address below to put it in the QR code)`;
  const done = h('button', { type: 'button', class: 'primary', text: 'I have saved them', onclick: onDone });
  const card = h('section', { class: 'card credentials', 'aria-labelledby': 'cred-h', dataset: { device: device.id } },
    h('h2', { id: 'cred-h', tabindex: '-1', text: `Credentials of ${label}` }),
    h('p', { class: 'warning', text: 'Shown only now: the cloud keeps just a hash of the password. Copy them or scan the QR code before leaving this page.' }),
    h('div', { class: 'cred-grid' },
      h('div', { class: 'cred-text' },
        h('dl', { class: 'cred' },
          h('dt', { text: 'Broker' }), h('dd', { dataset: { cred: 'broker' }, text: broker }),
          h('dt', { text: 'Client id' }), h('dd', { dataset: { cred: 'client_id' }, text: m.client_id })),
        secret('User name', m.username, { name: 'username' }),
        secret('Password', m.password, { name: 'password' }),
        h('h3', { text: 'Publishes to' }),
        h('ul', { class: 'topics', 'aria-label': 'publish topics' }, m.publish_topics.map((t) => h('li', {}, h('code', { text: t })))),
        h('h3', { text: 'Subscribes to' }),
        h('ul', { class: 'topics', 'aria-label': 'subscribe topics' }, m.subscribe_topics.map((t) => h('li', {}, h('code', { text: t }))))),
      h('figure', { class: 'qr' },
        h('img', { src: m.qr_svg, alt: `QR code with the MQTT credentials of ${label}: user name, password, broker and topics`, width: '220', height: '220' }),
        h('figcaption', { class: 'small muted', text: 'Scan with the node\'s set-up app, or print it for the box.' }))),
    h('details', { class: 'snippet' }, h('summary', { text: 'ESPHome configuration' }),
      secret('ESPHome YAML', m.esphome_yaml, { multiline: true, name: 'esphome' }),
      h('button', { type: 'button', class: 'esphome-save', text: `Save ${m.username}.yaml`,
        onclick: () => saveText(m.esphome_yaml, `${m.username}.yaml`) }),
      h('p', { class: 'small muted', text: 'Put it beside a secrets.yaml with your Wi-Fi (wifi_ssid, wifi_password, fallback_ap_password, ota_password), then: esphome run ' + `${m.username}.yaml` })),
    h('details', { class: 'snippet' }, h('summary', { text: 'Run it in the simulator' }),
      secret('Simulator commands', m.sim_command, { multiline: true, name: 'sim' })),
    h('details', { class: 'snippet' }, h('summary', { text: 'Provisioning text (the QR code\'s content)' }),
      secret('Provisioning text', m.provisioning, { multiline: true, name: 'provisioning' })),
    h('div', { class: 'actions' }, done));
  return card;
}

// ---- edges -------------------------------------------------------------------------------------

async function edgesSection(env) {
  const { api, farmId, owner, body } = env;
  if (!owner) {
    clear(body, h('p', { class: 'muted', text: 'Edge gateways are managed by the farm\'s owners.' }));
    return;
  }
  const list = h('ul', { class: 'items setup-list', 'aria-label': 'edge gateways' });
  const shown = h('div', { class: 'token-slot', 'aria-live': 'polite' });

  let roomNames = new Map();

  async function load() {
    const [edges, rooms] = await Promise.all([
      api.all(path`/api/farms/${farmId}/edges?limit=100`),
      api.all(path`/api/farms/${farmId}/rooms?limit=100`),
    ]);
    roomNames = new Map(rooms.map((r) => [r.id, r.name || r.id]));
    clear(list, edges.length ? edges.map(edgeItem)
      : h('li', { class: 'muted', text: 'No edge gateway yet: register the farm\'s Raspberry Pi below.' }));
  }

  function edgeItem(edge) {
    const li = h('li', { class: 'setup-item', dataset: { edge: edge.id, online: String(edge.online) } },
      h('div', { class: 'row wrap' },
        h('div', { class: 'grow' },
          h('span', { class: `dot ${edge.online ? 'on' : 'off'}` }),
          h('span', { class: 'name', text: edge.name || edge.id }),
          h('span', { class: 'muted small', text: ` ${edge.online ? 'online' : 'offline'} · last heard ${ago(edge.last_seen)} · token from ${shortDate(edge.rotated_at)}` }),
          h('p', { class: 'muted small', dataset: { edgeRooms: edge.id }, text: edgeSummary(edge, roomNames) })),
        h('div', { class: 'actions' },
          h('button', { type: 'button', text: 'New token', 'aria-label': `New token for ${edge.name || edge.id}`, onclick: rotate }),
          h('button', { type: 'button', class: 'danger', text: 'Remove', 'aria-label': `Remove ${edge.name || edge.id}`, onclick: remove }))));

    async function rotate() {
      const ok = await confirmIn(li, `Give ${edge.name || edge.id} a new token? The old one stops working at once: run the new command on the edge.`, 'New token');
      if (!ok) return;
      try {
        const made = await api.request('POST', inFarm(path`/api/edges/${edge.id}/rotate-token`, farmId));
        clear(shown, tokenCard(made, () => clear(shown)));
        reveal(shown);
        await load();
      } catch (err) {
        li.append(h('p', { class: 'error', role: 'alert', text: err.message }));
      }
    }

    async function remove() {
      const ok = await confirmIn(li, `Remove ${edge.name || edge.id}? Its token stops working and its rooms are left to the farm's other edges to be given; the farm's data stays.`, 'Remove edge');
      if (!ok) return;
      try {
        await api.request('DELETE', inFarm(path`/api/edges/${edge.id}`, farmId));
        await load();
      } catch (err) {
        li.append(h('p', { class: 'error', role: 'alert', text: err.message }));
      }
    }
    return li;
  }

  const fields = [
    field('Name', h('input', { type: 'text', maxlength: '100', autocomplete: 'off' }), { name: 'name', hint: 'e.g. "Shed Pi"' }),
    field('Id (optional)', h('input', { type: 'text', maxlength: '64', autocomplete: 'off', placeholder: 'generated' }), { name: 'id' }),
  ];
  const general = errorLine();
  const add = h('button', { type: 'submit', class: 'primary', text: 'Register edge' });
  const form = h('form', { class: 'setup-form', 'aria-labelledby': 'add-edge-h' },
    h('h2', { id: 'add-edge-h', text: 'Register an edge gateway' }),
    h('p', { class: 'muted small', text: 'The edge is the Raspberry Pi on the farm: it runs the devices\' broker and the automation, and syncs with this cloud.' }),
    fields.map((f) => f.el), general, h('div', { class: 'actions' }, add));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const payload = { name: fields[0].input.value.trim() };
    if (fields[1].input.value.trim()) payload.id = fields[1].input.value.trim();
    await busy(add, async () => {
      try {
        const made = await api.request('POST', path`/api/farms/${farmId}/edges`, payload);
        showErrors(fields, general, null);
        fields.forEach((f) => { f.input.value = ''; });
        clear(shown, tokenCard(made, () => clear(shown)));
        reveal(shown);
        await load();
      } catch (err) {
        showErrors(fields, general, err);
      }
    });
  });
  clear(body, shown,
    h('section', { class: 'card', 'aria-labelledby': 'edges-h' }, h('h2', { id: 'edges-h', text: 'Edge gateways' }), list),
    h('section', { class: 'card' }, form));
  await load();
}

// The rooms an edge runs (moved on the Rooms tab) and what it last reported.
function edgeSummary(edge, roomNames) {
  const rooms = (edge.rooms || []).map((id) => roomNames.get(id) || id);
  const parts = [rooms.length ? `runs ${rooms.join(', ')}` : 'runs no room'];
  if (edge.backlog !== null && edge.backlog !== undefined) parts.push(`${edge.backlog.toLocaleString()} to upload`);
  if (edge.software_version) parts.push(`version ${edge.software_version}`);
  return parts.join(' · ');
}

function tokenCard(edge, onDone) {
  return h('section', { class: 'card credentials', 'aria-labelledby': 'token-h', dataset: { edge: edge.id } },
    h('h2', { id: 'token-h', text: `Connect ${edge.name || edge.id}` }),
    h('p', { class: 'warning', text: 'The token is shown only now. Run one of these commands on the edge.' }),
    h('h3', { text: 'A new Raspberry Pi' }),
    h('p', { class: 'muted small', text: 'Sets up the edge in /srv/smartfarm; the farm\'s rooms and devices come from the cloud.' }),
    secret('Set-up command', edge.init_command, { multiline: true, name: 'init' }),
    h('h3', { text: 'An edge already set up' }),
    h('p', { class: 'muted small', text: 'Run it beside the edge\'s edge.toml, then restart the edge.' }),
    secret('Registration command', edge.register_command, { multiline: true, name: 'register' }),
    secret('Token', edge.token, { name: 'token' }),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', text: 'Done', onclick: onDone })));
}

// ---- members -----------------------------------------------------------------------------------

async function membersSection(env) {
  const { api, farmId, owner, body } = env;
  if (!owner) {
    clear(body, h('p', { class: 'muted', text: 'Members are managed by the farm\'s owners.' }));
    return;
  }
  const rooms = await api.all(path`/api/farms/${farmId}/rooms?limit=100`);
  const roomName = (id) => (rooms.find((r) => r.id === id) || { name: id }).name || id;
  const roomsText = (ids) => (ids === null || ids === undefined ? 'all rooms' : (ids.length ? ids.map(roomName).join(', ') : 'no rooms'));
  const list = h('ul', { class: 'items setup-list', 'aria-label': 'members' });
  const pending = h('ul', { class: 'items setup-list', 'aria-label': 'open invitations' });
  const shown = h('div', { class: 'invite-slot', 'aria-live': 'polite' });

  async function load() {
    const [members, invites] = await Promise.all([
      api.all(path`/api/farms/${farmId}/members?limit=100`),
      api.get(path`/api/farms/${farmId}/invites`),
    ]);
    clear(list, members.filter((m) => m.activated).map(memberItem));
    clear(pending, invites.length ? invites.map(inviteItem)
      : h('li', { class: 'muted', text: 'No open invitations.' }));
  }

  function roomPicker(selected) {
    const all = checkbox('All rooms, including rooms added later', { name: 'all_rooms', checked: selected === null });
    const boxes = rooms.map((r) => checkbox(r.name || r.id, { name: 'room_ids', checked: selected !== null && selected.includes(r.id) }));
    boxes.forEach((b, i) => { b.input.value = rooms[i].id; });
    const group = h('div', { class: 'room-boxes' }, boxes.map((b) => b.el));
    const sync = () => { group.hidden = all.input.checked; };
    all.input.addEventListener('change', sync);
    sync();
    const error = h('p', { class: 'field-error', role: 'alert', hidden: true });
    const el = h('fieldset', { class: 'rooms-grant' }, h('legend', { text: 'Rooms' }), all.el, group, error);
    return {
      el,
      value: () => (all.input.checked ? null : boxes.filter((b) => b.input.checked).map((b) => b.input.value)),
      // showErrors needs one input to flag: the "all rooms" box.
      field: { el, input: all.input, error, name: 'room_ids' },
    };
  }

  function memberItem(m) {
    const li = h('li', { class: 'setup-item', dataset: { member: m.email } });
    const show = () => clear(li,
      h('div', { class: 'row wrap' },
        h('div', { class: 'grow' },
          h('span', { class: 'name', text: m.display_name || m.email }),
          h('p', { class: 'muted small', text: `${m.display_name ? `${m.email} · ` : ''}${ROLE_NAMES[m.role]} · ${m.role === 'owner' ? 'all rooms' : roomsText(m.room_ids)}` })),
        h('div', { class: 'actions' },
          h('button', { type: 'button', text: 'Change', 'aria-label': `Change role of ${m.email}`, onclick: edit }),
          h('button', { type: 'button', class: 'danger', text: 'Remove', 'aria-label': `Remove ${m.email}`, onclick: remove }))));

    function edit() {
      const roleF = field('Role', select(ROLES, m.role), { name: 'role', hint: ROLE_HINT });
      const picker = roomPicker(m.role === 'owner' ? null : m.room_ids);
      const syncRole = () => { picker.el.hidden = roleF.input.value === 'owner'; };
      roleF.input.addEventListener('change', syncRole);
      syncRole();
      const general = errorLine();
      const save = h('button', { type: 'submit', class: 'primary', text: 'Save' });
      const form = h('form', { class: 'setup-form', 'aria-label': `Change ${m.email}` },
        roleF.el, picker.el, general,
        h('div', { class: 'actions' }, save, h('button', { type: 'button', text: 'Cancel', onclick: show })));
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        const role = roleF.input.value;
        const payload = role === 'owner' ? { role } : { role, room_ids: picker.value() };
        await busy(save, async () => {
          try {
            m = await api.request('PATCH', path`/api/farms/${farmId}/members/${m.user_id}`, payload);
            show();
          } catch (err) {
            showErrors([roleF, picker.field], general, err);
          }
        });
      });
      clear(li, form);
      roleF.input.focus();
    }

    async function remove() {
      const ok = await confirmIn(li, `Remove ${m.email} from the farm? They keep their account but no longer see this farm.`, 'Remove member');
      if (!ok) return;
      try {
        await api.request('DELETE', path`/api/farms/${farmId}/members/${m.user_id}`);
        await load();
      } catch (err) {
        li.append(h('p', { class: 'error', role: 'alert', text: `Could not remove: ${err.message}` }));
      }
    }
    show();
    return li;
  }

  function inviteItem(inv) {
    const li = h('li', { class: 'setup-item', dataset: { invite: inv.email } },
      h('div', { class: 'row wrap' },
        h('div', { class: 'grow' },
          h('span', { class: 'name', text: inv.email }),
          h('p', { class: 'muted small', text: `${ROLE_NAMES[inv.role]} · ${inv.role === 'owner' ? 'all rooms' : roomsText(inv.room_ids)} · invited ${shortDate(inv.created_at)} · ${inv.invite_expires_at && new Date(inv.invite_expires_at) > Date.now() ? `link expires ${fromNow(inv.invite_expires_at)}` : 'link expired: make a new one'}` })),
        h('div', { class: 'actions' },
          h('button', { type: 'button', text: 'New link', 'aria-label': `New link: invitation for ${inv.email}`, onclick: renew }),
          h('button', { type: 'button', class: 'danger', text: 'Revoke', 'aria-label': `Revoke the invitation of ${inv.email}`, onclick: revoke }))));

    async function renew() {
      try {
        const made = await api.request('POST', path`/api/farms/${farmId}/invites/${inv.user_id}/renew`);
        clear(shown, inviteCard(made, () => clear(shown)));
        reveal(shown);
        await load();
      } catch (err) {
        li.append(h('p', { class: 'error', role: 'alert', text: err.message }));
      }
    }

    async function revoke() {
      const ok = await confirmIn(li, `Revoke the invitation of ${inv.email}? Their link stops working.`, 'Revoke invitation');
      if (!ok) return;
      try {
        await api.request('DELETE', path`/api/farms/${farmId}/invites/${inv.user_id}`);
        await load();
      } catch (err) {
        li.append(h('p', { class: 'error', role: 'alert', text: err.message }));
      }
    }
    return li;
  }

  const emailF = field('Email', h('input', { type: 'email', required: true, autocomplete: 'off' }), { name: 'email' });
  const roleF = field('Role', select(ROLES, 'operator'), { name: 'role', hint: ROLE_HINT });
  const picker = roomPicker(null);
  const syncRole = () => { picker.el.hidden = roleF.input.value === 'owner'; };
  roleF.input.addEventListener('change', syncRole);
  syncRole();
  const general = errorLine();
  const invite = h('button', { type: 'submit', class: 'primary', text: 'Invite' });
  const form = h('form', { class: 'setup-form', 'aria-labelledby': 'invite-h' },
    h('h2', { id: 'invite-h', text: 'Invite someone' }),
    emailF.el, roleF.el, picker.el, general, h('div', { class: 'actions' }, invite));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const role = roleF.input.value;
    const payload = { email: emailF.input.value.trim(), role };
    if (role !== 'owner') payload.room_ids = picker.value();
    await busy(invite, async () => {
      try {
        const made = await api.request('POST', path`/api/farms/${farmId}/members`, payload);
        showErrors([emailF, roleF, picker.field], general, null);
        emailF.input.value = '';
        clear(shown, made.invite_token
          ? inviteCard(made, () => clear(shown))
          : h('section', { class: 'card credentials', role: 'status' },
            h('p', { text: `${made.email} already has an account: they see this farm the next time they sign in.` }),
            h('button', { type: 'button', text: 'OK', onclick: () => clear(shown) })));
        reveal(shown);
        await load();
      } catch (err) {
        showErrors([emailF, roleF, picker.field], general, err);
      }
    });
  });
  clear(body, shown,
    h('section', { class: 'card', 'aria-labelledby': 'members-h' }, h('h2', { id: 'members-h', text: 'Members' }), list),
    h('section', { class: 'card', 'aria-labelledby': 'pending-h' }, h('h2', { id: 'pending-h', text: 'Open invitations' }), pending),
    h('section', { class: 'card' }, form));
  await load();
}

function inviteCard(made, onDone) {
  const mail = made.invite_email || { status: 'off', detail: '' };
  const how = mail.status === 'sent'
    ? `We emailed ${made.email} this link.`
    : `Send ${made.email} this link${mail.status === 'failed' ? ' (the email could not be sent)' : ''}.`;
  return h('section', { class: 'card credentials', 'aria-labelledby': 'inv-h', dataset: { invite: made.email, mail: mail.status } },
    h('h2', { id: 'inv-h', text: `Invitation for ${made.email}` }),
    h('p', { text: `${how} They open it, choose a password and are signed in to the farm. It works once, until ${shortDate(made.invite_expires_at)}; “New link” makes another and stops this one.` }),
    mail.status === 'failed' ? h('p', { class: 'error small', text: mail.detail }) : null,
    secret('Invitation link', made.invite_url, { name: 'invite-link' }),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', text: 'Done', onclick: onDone })));
}
