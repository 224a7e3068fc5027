// The dashboard shell: sign-in state (shared by the browser's tabs: see api.js), the account
// menu (sign out, sign out everywhere), the live socket, and a hash router over the views
// (#/ farms, #/farm/{id} overview, #/farm/{id}/room/{id} room: room ids are per farm;
// #/farm/{id}/setup… the farm's set-up, #/farm/{id}/alarms… its alarms and audit, #/account…). Each view
// gets a context and returns a cleanup function that the router calls before showing the next.

import { Api } from './api.js';
import { Live } from './live.js';
import { h, clear, loadVocabulary } from './dom.js';
import { loginView } from './view-login.js';
import { inviteView } from './view-invite.js';
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
const menu = document.getElementById('menu');
const whoami = document.getElementById('whoami');
const notice = document.getElementById('notice');
const confirmAll = document.getElementById('logout-all-confirm');
let cleanup = null;
let generation = 0;
let pendingNotice = null;
let returnTo = null;  // where a signed-out visitor was going: shown after signing in
let shownOnce = false;

// A message for the next view shown (e.g. on the sign-in page after a sign-out).
function flash(text) {
  pendingNotice = text;
}

function showNotice() {
  notice.textContent = pendingNotice || '';
  notice.hidden = !pendingNotice;
  pendingNotice = null;
}

const LABELS = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', offline: 'offline' };
live.addEventListener('state', (event) => {
  conn.dataset.state = event.detail;
  conn.textContent = LABELS[event.detail] || event.detail;
});

function toLogin(message) {
  live.stop();
  whoami.textContent = '';
  if (message) flash(message);
  if (location.hash.startsWith('#/login')) show();
  else location.hash = '#/login';
}

const SIGNED_OUT = {
  logout: () => 'You are signed out.',
  everywhere: (count) => `Signed out everywhere (${count} ${count === 1 ? 'session' : 'sessions'} ended).`,
  elsewhere: () => 'You were signed out in another tab.',
  expired: () => 'Your session has ended. Please sign in again.',
};

// Every way out of a session ends here: a sign-out (this tab's menu, or a view calling
// api.logout() / api.logoutEverywhere()), another tab's, or a session the server ended.
api.onSignedOut = (why, count) => {
  closeMenu();
  const chosen = why === 'logout' || why === 'everywhere';
  if (!chosen && location.hash.startsWith('#/login')) return;  // told twice: API and socket
  returnTo = chosen ? null : location.hash;
  toLogin((SIGNED_OUT[why] || SIGNED_OUT.expired)(count));
};

// Signed in in another tab: this one follows.
api.onSignedIn = () => {
  if (location.hash.startsWith('#/login')) location.hash = returnTo || '#/';
};

function closeMenu() {
  menu.open = false;
  confirmAll.hidden = true;
}

document.getElementById('logout').addEventListener('click', () => api.logout());

document.getElementById('logout-all').addEventListener('click', () => {
  confirmAll.hidden = false;
  document.getElementById('logout-all-yes').focus();
});
document.getElementById('logout-all-no').addEventListener('click', () => {
  confirmAll.hidden = true;
  document.getElementById('logout-all').focus();
});
document.getElementById('logout-all-yes').addEventListener('click', async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  try {
    await api.logoutEverywhere();
  } catch (err) {
    if (err.status !== 401) {
      flash(`Could not sign out everywhere: ${err.message}`);
      showNotice();
    }
  } finally {
    button.disabled = false;
  }
});

// The menu closes with Escape and when focus or a click goes elsewhere.
menu.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && menu.open) {
    closeMenu();
    menu.querySelector('summary').focus();
  }
});
document.addEventListener('click', (event) => {
  if (menu.open && !menu.contains(event.target)) closeMenu();
});
menu.addEventListener('focusout', (event) => {
  if (menu.open && event.relatedTarget && !menu.contains(event.relatedTarget)) closeMenu();
});
menu.querySelector('.menu-panel a').addEventListener('click', closeMenu);

// The skip link moves focus to the view (its href would otherwise be taken for a route).
document.getElementById('skip').addEventListener('click', (event) => {
  event.preventDefault();
  main.focus();
});

async function showWho() {
  if (whoami.textContent) return;
  try {
    const me = await api.get('/api/users/me');
    whoami.textContent = `Signed in as ${me.email}`;
  } catch (err) {
    // the view reports a failing API; the menu works without the name
  }
}

function setCrumbs(...items) {
  clear(crumbs, items.map((item, i) => [
    i ? h('span', { class: 'sep', 'aria-hidden': 'true', text: '›' }) : null,
    item.href ? h('a', { href: item.href, text: item.label })
      : h('span', { 'aria-current': i === items.length - 1 ? 'page' : null, text: item.label }),
  ]));
  const last = items.length ? items[items.length - 1].label : '';
  document.title = last ? `${last} · smartfarm` : 'smartfarm';
}

function route() {
  const hash = location.hash || '#/';
  const parts = hash.slice(2).split('/').map(decodeURIComponent);
  if (parts[0] === 'login') return { view: loginView, args: [] };
  if (parts[0] === 'invite' && parts[1]) return { view: inviteView, args: [parts[1]], public: true };
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
  const { view, args, public: open = view === loginView } = route();
  generation += 1;
  const mine = generation;
  if (!open && !api.signedIn) {
    returnTo = location.hash;
    location.hash = '#/login';
    return;
  }
  if (view === loginView && api.signedIn) {
    location.hash = '#/';  // already signed in (this tab or another)
    return;
  }
  menu.hidden = open;
  conn.hidden = open;  // signed out: no live link to speak of
  if (open) closeMenu();
  showNotice();
  clear(main, h('p', { class: 'muted', text: 'Loading…' }));
  const afterLogin = () => {
    const target = returnTo && !returnTo.startsWith('#/login') ? returnTo : '#/';
    returnTo = null;
    location.hash = target;
  };
  const ctx = { api, live, main, setCrumbs, afterLogin, flash };
  try {
    if (!open) {
      await api.ensureAccess();  // a new tab: an access token before the socket and the view
      if (mine !== generation) return;
      live.start();
      showWho();
      await loadVocabulary(api);
    }
    const done = (await view(ctx, ...args)) || null;
    if (mine === generation) cleanup = done;
    else if (done) done();  // the user moved on while this view loaded
    // After a navigation, focus goes to the new view (screen readers read it; Tab starts there).
    if (mine === generation && shownOnce && !open && !main.contains(document.activeElement)) {
      main.focus({ preventScroll: true });
    }
    shownOnce = true;
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
