// a farm's set-up: rooms, devices, edges, members — to be built.

import { h, clear } from './dom.js';

export async function setupView({ main }) {
  clear(main, h('p', { class: 'muted', text: 'Not built yet.' }));
  return null;
}
