// the room's grow logbook (batches, stage changes, notes, harvests) — to be built.

import { h } from './dom.js';

export function logbookSection() {
  return { el: h('div', { hidden: true }), load: async () => {}, dispose() {} };
}
