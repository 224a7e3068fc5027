// "ESPHome node file" download for a device: fetched with the tab's bearer token (a plain link
// would carry none), saved through a blob: URL. The file has no password (the cloud keeps only a
// hash): the node reads it from its secrets.yaml (docs/devices.md).

import { inFarm, path } from './api.js';
import { h } from './dom.js';

export function saveText(text, filename, type = 'application/yaml') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function esphomeButton(ctx, farmId, device, onError) {
  return h('button', {
    type: 'button', class: 'link small esphome-download', text: 'ESPHome node file',
    'aria-label': `Download the ESPHome node file of ${device.name || device.id}`,
    onclick: async () => {
      try {
        const text = await ctx.api.text(inFarm(path`/api/devices/${device.id}/esphome.yaml`, farmId), 'text/plain');
        saveText(text, `${device.id}.yaml`);
      } catch (err) {
        onError(err);
      }
    },
  });
}
