// the signed-in user's account: notification settings, sign out everywhere — to be built.

import { h, clear } from './dom.js';

export async function accountView({ main }) {
  clear(main, h('p', { class: 'muted', text: 'Not built yet.' }));
  return null;
}
