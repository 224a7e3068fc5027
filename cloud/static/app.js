// The dashboard shell: sign-in state, the live socket, and a hash router over the views
// (#/ farms, #/farm/{id} overview, #/farm/{id}/room/{id} room: room ids are per farm;
// #/farm/{id}/setup… the farm's set-up, #/farm/{id}/alarms… its alarms and audit, #/account…). Each view
// gets a context and returns a cleanup function that the router calls before showing the next.

import { Api } from './api.js';
import { Live } from './live.js';
import { h, clear, loadVocabulary } from './dom.js';
import { loginView } from './view-login.js';
import { farmsView, farmView } from './view-farm.js';
import { roomView } from './view-room.js';
import { setupView } from './view-setup.js';
import { alarmsView } from './view-alarms.js';
import { accountView } from './view-account.js';

const api = new Api();
const live = new Live(api);
const main = document.getElementById('view');
const crumbs = document.getElementById('crumbs');
const conn = document.getElementById('conn');
const logout = document.getElementById('logout');
let cleanup = null;
let generation = 0;

const LABELS = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', offline: 'offline' };
live.addEventListener('state', (event) => {
  conn.dataset.state = event.detail;
  conn.textContent = LABELS[event.detail] || event.detail;
});

api.onSignedOut = () => {
  live.stop();
  if (!location.hash.startsWith('#/login')) location.hash = '#/login';
};

logout.addEventListener('click', async () => {
  live.stop();
  await api.logout();
  location.hash = '#/login';
});

function setCrumbs(...items) {
  clear(crumbs, items.map((item, i) => [
    i ? h('span', { class: 'sep', text: '›' }) : null,
    item.href ? h('a', { href: item.href, text: item.label }) : h('span', { text: item.label }),
  ]));
}

function route() {
  const hash = location.hash || '#/';
  const parts = hash.slice(2).split('/').map(decodeURIComponent);
  if (parts[0] === 'login') return { view: loginView, args: [] };
  if (parts[0] === 'farm' && parts[1] && parts[2] === 'room' && parts[3]) {
    return { view: roomView, args: [parts[1], parts[3]] };
  }
  if (parts[0] === 'farm' && parts[1] && parts[2] === 'setup') return { view: setupView, args: [parts[1], parts.slice(3)] };
  if (parts[0] === 'farm' && parts[1] && parts[2] === 'alarms') return { view: alarmsView, args: [parts[1], parts.slice(3)] };
  if (parts[0] === 'farm' && parts[1]) return { view: farmView, args: [parts[1]] };
  if (parts[0] === 'account') return { view: accountView, args: [parts.slice(1)] };
  // A link from before room ids were per farm: the room view finds its farm.
  if (parts[0] === 'room' && parts[1]) return { view: roomView, args: [null, parts[1]] };
  return { view: farmsView, args: [] };
}

async function show() {
  if (cleanup) {
    try { cleanup(); } catch (err) { console.error(err); }
    cleanup = null;
  }
  live.unsubscribeAll();
  const { view, args } = route();
  generation += 1;
  const mine = generation;
  if (view !== loginView && !api.signedIn) {
    location.hash = '#/login';
    return;
  }
  logout.hidden = !api.signedIn;
  if (api.signedIn) live.start();
  clear(main, h('p', { class: 'muted', text: 'Loading…' }));
  const ctx = { api, live, main, setCrumbs };
  try {
    if (view !== loginView) await loadVocabulary(api);
    const done = (await view(ctx, ...args)) || null;
    if (mine === generation) cleanup = done;
    else if (done) done();  // the user moved on while this view loaded
  } catch (err) {
    if (mine !== generation) return;
    if (err && err.status === 401) return;
    console.error(err);
    clear(main, h('p', { class: 'error', role: 'alert', text: `Could not load: ${err.message}` }),
      h('p', {}, h('a', { href: '#/', text: 'Back to your farms' })));
  }
}

window.addEventListener('hashchange', show);
show();
