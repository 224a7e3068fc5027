// The charts' axes and time words: ticks on round values and on local clock boundaries, spaced
// so their labels never overlap, and "6 Dec 14:05" for a moment.

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const DAY = 86400e3;
// The plot's box inside each chart's SVG (px).
export const PAD = { left: 48, right: 10, top: 12 };
export const PLOT_H = 170;

const pad2 = (n) => String(n).padStart(2, '0');
export const hhmm = (t) => { const d = new Date(t); return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`; };
export const dayMonth = (t) => { const d = new Date(t); return `${d.getDate()} ${MONTHS[d.getMonth()]}`; };
// "6 Dec 14:05": the one way a moment is written on the charts.
export const moment = (t) => `${dayMonth(t)} ${hhmm(t)}`;

export function decimalsOf(v) {
  const text = String(Math.round(v * 1e6) / 1e6);
  const dot = text.indexOf('.');
  return dot < 0 ? 0 : text.length - dot - 1;
}

export function valueTicks(lo, hi, n) {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) {
    out.push(Number((Math.round(v / step) * step).toPrecision(12)));
  }
  return out;
}

// Time steps, each with the width its label needs (11 px text): clock times for steps under a
// day, "6 Dec" for days and weeks. Ticks fall on local clock boundaries (whole hours, midnights,
// Mondays), and the step is the smallest that gives at most ~10 ticks whose labels do not
// overlap at this width.
const STEPS = [
  { ms: 60e3, unit: 'minute', n: 1 }, { ms: 5 * 60e3, unit: 'minute', n: 5 },
  { ms: 10 * 60e3, unit: 'minute', n: 10 }, { ms: 15 * 60e3, unit: 'minute', n: 15 },
  { ms: 30 * 60e3, unit: 'minute', n: 30 }, { ms: 3600e3, unit: 'hour', n: 1 },
  { ms: 2 * 3600e3, unit: 'hour', n: 2 }, { ms: 3 * 3600e3, unit: 'hour', n: 3 },
  { ms: 6 * 3600e3, unit: 'hour', n: 6 }, { ms: 12 * 3600e3, unit: 'hour', n: 12 },
  { ms: DAY, unit: 'day', n: 1 }, { ms: 2 * DAY, unit: 'day', n: 2 },
  { ms: 7 * DAY, unit: 'week', n: 1 }, { ms: 14 * DAY, unit: 'week', n: 2 },
  { ms: 30 * DAY, unit: 'month', n: 1 },
];
const LABEL_PX = { minute: 44, hour: 44, day: 48, week: 48, month: 48 };

export function timeTicks(from, to, plotW) {
  const span = to - from;
  // At most ~10 ticks however wide (7 days: a tick a day, 30 days: a week), and room for each label.
  const step = STEPS.find((st) => st.ms >= span / 10.5 && (span / st.ms) * LABEL_PX[st.unit] <= plotW * 0.9)
    || STEPS[STEPS.length - 1];
  const out = [];
  const d = new Date(from);
  // The first boundary at or after `from`.
  d.setSeconds(0, 0);
  if (step.unit === 'minute') d.setMinutes(Math.ceil(d.getMinutes() / step.n) * step.n);
  else if (step.unit === 'hour') {
    d.setMinutes(0);
    if (d.getTime() < from) d.setHours(d.getHours() + 1);
    d.setHours(Math.ceil(d.getHours() / step.n) * step.n);
  } else {
    d.setHours(0, 0);
    if (d.getTime() < from) d.setDate(d.getDate() + 1);
    if (step.unit === 'week') while (d.getDay() !== 1) d.setDate(d.getDate() + 1);
    if (step.unit === 'month') { if (d.getDate() !== 1) { d.setMonth(d.getMonth() + 1, 1); } }
    if (step.unit === 'day' && step.n > 1) {
      // Even day numbers since the epoch, so ticks stay put while the range slides.
      while (Math.round(d.getTime() / DAY) % step.n) d.setDate(d.getDate() + 1);
    }
  }
  let guard = 0;
  while (d.getTime() <= to && guard < 200) {
    guard += 1;
    const t = d.getTime();
    const midnight = d.getHours() === 0 && d.getMinutes() === 0;
    const label = step.ms >= DAY || (midnight && step.ms >= 3600e3) ? dayMonth(t) : hhmm(t);
    if (t >= from) out.push({ t, label, major: midnight });
    if (step.unit === 'minute') d.setMinutes(d.getMinutes() + step.n);
    else if (step.unit === 'hour') d.setHours(d.getHours() + step.n);
    else if (step.unit === 'day') d.setDate(d.getDate() + step.n);
    else if (step.unit === 'week') d.setDate(d.getDate() + 7 * step.n);
    else d.setMonth(d.getMonth() + 1);
  }
  return out;
}
