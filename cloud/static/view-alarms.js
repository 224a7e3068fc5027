// a farm's alarms with their history, and its command audit — to be built.

import { h, clear } from './dom.js';

export async function alarmsView({ main }) {
  clear(main, h('p', { class: 'muted', text: 'Not built yet.' }));
  return null;
}
