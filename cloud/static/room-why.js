// A room's effective automation as its edge reports it (GET /api/rooms/{id}/automation-state):
// one copy per open room, shared by the rules section and the device rows, reloaded when the
// live socket says the edge reported anew ("automation"), a hold command moves on, or after a
// reconnect. Also the words for holds and safety holds, and relative times ("12 min left").

import { inFarm, path } from './api.js';
import { METRICS } from './dom.js';

const stores = new Map();
// Where a hold was asked, when not the cloud (Home Assistant's holds say so in their "by").
const HOLD_SOURCES = { manual: ' at the farm' };

export function untilText(when, now = Date.now()) {
  if (!when) return '';
  const seconds = Math.round((new Date(when).getTime() - now) / 1000);
  if (seconds <= 0) return 'ending now';
  if (seconds < 90) return `${seconds} s left`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min left`;
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.round((seconds % 3600) / 60);
  return minutes ? `${hours} h ${minutes} min left` : `${hours} h left`;
}

export function shortTime(when) {
  return new Date(when).toLocaleString([], { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' });
}

export function minutesText(minutes) {
  if (minutes < 60) return `${Math.round(minutes)} min`;
  const hours = minutes / 60;
  return Number.isInteger(hours) ? `${hours} h` : `${hours.toFixed(1)} h`;
}

// The edge's reason for a switch in words: "humidity_pct 80.0 < 85 (rule room-a-rh)" →
// "Humidity 80.0 < 85".
export function reasonText(reason) {
  let text = String(reason || '').replace(/\s*\(rule [^)]*\)/g, '').replace(/\s*\(safety\)/, ' (safety limit)');
  for (const [name, info] of Object.entries(METRICS)) {
    text = text.replaceAll(name, info.label);
  }
  return text;
}

// "held on by Ana for 30 min — 12 min left", "auto", "on: minimum on-time, 2 min left"
export function modeText(actuator) {
  if (!actuator) return '';
  const parts = [];
  if (actuator.hold) {
    const h = actuator.hold;
    const sent = actuator.last_hold && actuator.last_hold.action === (h.on ? 'on' : 'off')
      ? actuator.last_hold : null;
    const length = sent && sent.hold_minutes ? ` for ${minutesText(sent.hold_minutes)}` : '';
    const where = (h.by !== 'home-assistant' && HOLD_SOURCES[h.source]) || '';
    parts.push(`held ${h.on ? 'on' : 'off'} by ${h.by}${where}${length} — ${untilText(h.until)} (until ${shortTime(h.until)})`);
  } else if (actuator.mode === 'unknown') {
    parts.push('not reported by the edge yet');
  } else {
    parts.push(actuator.reason ? `auto — ${actuator.on ? 'on' : 'off'} because ${reasonText(actuator.reason)}` : 'auto');
  }
  if (actuator.safety_hold) {
    const s = actuator.safety_hold;
    parts.push(s.until ? `${s.text}, ${untilText(s.until)}` : s.text);
  }
  return parts.join(' · ');
}

export function roomAutomation(ctx, farmId, roomId) {
  const key = `${farmId}/${roomId}`;
  let store = stores.get(key);
  if (store) return store;
  const url = inFarm(path`/api/rooms/${roomId}/automation-state`, farmId);
  const listeners = new Set();
  let state = null;
  let loading = null;
  let again = false;

  async function load() {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      do {
        again = false;
        try {
          state = await ctx.api.get(url);
        } catch (err) {
          console.warn('automation state', err.message);
        }
      } while (again);
      loading = null;
      for (const fn of [...listeners]) fn(state);
    })();
    return loading;
  }

  const here = (msg) => msg.farm_id === farmId && msg.room_id === roomId;
  const handlers = {
    automation: (event) => { if (here(event.detail)) load(); },
    command: (event) => {
      // A hold or back-to-auto moving on (pending → delivered → acked) shows in the rows.
      const { command } = event.detail;
      if (here(event.detail) && state && state.actuators.some((a) => a.device_id === command.device_id)) load();
    },
    resync: () => load(),
  };
  const stopListening = ctx.live.listen(handlers);

  store = {
    get state() { return state; },
    load,
    // fn(state) on every reload (and now, if loaded); returns the unsubscribe.
    subscribe(fn) {
      listeners.add(fn);
      if (state) fn(state);
      else load();
      return () => listeners.delete(fn);
    },
    dispose() {
      stopListening();
      listeners.clear();
      stores.delete(key);
    },
  };
  stores.set(key, store);
  return store;
}
