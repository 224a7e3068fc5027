// Small DOM helpers. Text always enters the page as text nodes or textContent, never as HTML,
// so names typed by users (rooms, devices, rules, alerts) cannot inject markup.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'value') el.value = String(value);
    else if (key === 'checked') el.checked = Boolean(value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? '' : String(value));
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// The farm's words come from the cloud (GET /api/vocabulary, i.e. shared.vocabulary), loaded once
// after sign-in by loadVocabulary(); these containers are filled in place, so importers keep them.
export const METRICS = {};  // name → { label, unit, digits }
export const BANDED = [];   // the metrics every grow profile has a band for
export const STAGES = [];   // stage ids, in grow order
export const NODE_METRICS = [];  // a sensor node's own health (its battery), not the room's
const LABELS = { species: {}, stages: {}, actuators: {} };
let vocabulary = null;

export function loadVocabulary(api) {
  vocabulary = vocabulary || api.get('/api/vocabulary').then((v) => {
    for (const m of v.metrics) METRICS[m.name] = { label: m.label, unit: m.unit, digits: m.decimals };
    BANDED.splice(0, BANDED.length, ...v.metrics.filter((m) => m.banded).map((m) => m.name));
    STAGES.splice(0, STAGES.length, ...v.stages.map((s) => s.id));
    NODE_METRICS.splice(0, NODE_METRICS.length, ...v.metrics.filter((m) => !m.room).map((m) => m.name));
    for (const s of v.species) LABELS.species[s.id] = s.label;
    for (const s of v.stages) LABELS.stages[s.id] = s.label;
    for (const r of v.actuator_roles) LABELS.actuators[r.id] = r.label;
  }).catch((err) => { vocabulary = null; throw err; });
  return vocabulary;
}

export const speciesLabel = (id) => LABELS.species[id] || words(id);
export const stageLabel = (id) => LABELS.stages[id] || words(id);
export const actuatorLabel = (role) => LABELS.actuators[role] || words(role);

export function metricInfo(metric) {
  return METRICS[metric] || { label: metric, unit: '', digits: 2 };
}

export function formatValue(metric, value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  const info = metricInfo(metric);
  return `${Number(value).toFixed(info.digits)} ${info.unit}`.trim();
}

export function words(text) {
  return String(text).replaceAll('_', ' ');
}

export function inBand(band, value) {
  if (!band) return null;
  return (band.min === null || value >= band.min) && (band.max === null || value <= band.max);
}

export function bandText(metric, band) {
  if (!band) return '';
  const info = metricInfo(metric);
  if (band.min === null) return `≤ ${band.max} ${info.unit}`;
  if (band.max === null) return `≥ ${band.min} ${info.unit}`;
  return `${band.min}–${band.max} ${info.unit}`;
}

export function ago(when) {
  if (!when) return 'never';
  const seconds = Math.round((Date.now() - new Date(when).getTime()) / 1000);
  if (seconds < 5) return 'just now';
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function clock(when) {
  return new Date(when).toLocaleString([], {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}
