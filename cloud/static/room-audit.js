// the room's command audit (who switched what, and the outcome) — to be built.

import { h } from './dom.js';

export function auditSection() {
  return { el: h('div', { hidden: true }), load: async () => {}, dispose() {} };
}
