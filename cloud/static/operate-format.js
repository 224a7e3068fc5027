// Dates and durations as growers read them in the alarms, audit and logbook views:
// "6 Dec 14:05", "3 min ago", "in 12 min", "4.2 s".

const SHORT = { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit', hour12: false };

export function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  const options = d.getFullYear() === new Date().getFullYear() ? SHORT : { ...SHORT, year: 'numeric' };
  return d.toLocaleString('en-GB', options).replace(',', '');
}

export function day(iso) {
  if (!iso) return '–';
  const d = new Date(iso.length === 10 ? `${iso}T12:00:00` : iso);
  return d.toLocaleDateString('en-GB', { day: 'numeric', month: 'short', year: 'numeric' });
}

export function relative(iso) {
  if (!iso) return 'never';
  const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  const span = Math.abs(seconds);
  let text;
  if (span < 45) return seconds > 0 ? 'in a moment' : 'just now';
  if (span < 5400) text = `${Math.round(span / 60)} min`;
  else if (span < 129600) text = `${Math.round(span / 3600)} h`;
  else text = `${Math.round(span / 86400)} d`;
  return seconds > 0 ? `in ${text}` : `${text} ago`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '';
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// For <input type="datetime-local">: local time without seconds, and back to ISO with offset.
export function localInput(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : null;
}

export const SEVERITY_WORDS = { critical: 'Critical', warning: 'Warning', info: 'Info' };
export const STATUS_WORDS = { active: 'Active', acknowledged: 'Acknowledged', cleared: 'Cleared' };

// The caller's role in a farm, asked once a minute at most.
const roles = new Map();
export function farmRole(api, farmId) {
  const known = roles.get(farmId);
  if (known && known.api === api && Date.now() - known.at < 60000) return known.role;
  const role = api.get(`/api/farms/${encodeURIComponent(farmId)}`)
    .then((farm) => farm.role)
    .catch((err) => { roles.delete(farmId); throw err; });
  roles.set(farmId, { api, at: Date.now(), role });
  return role;
}

export const canOperateRole = (role) => role === 'operator' || role === 'owner';
