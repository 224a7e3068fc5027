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

export const METRICS = {
  temperature_c: { label: 'Temperature', unit: '°C', digits: 1 },
  humidity_pct: { label: 'Humidity', unit: '% RH', digits: 1 },
  co2_ppm: { label: 'CO₂', unit: 'ppm', digits: 0 },
  light_lux: { label: 'Light', unit: 'lx', digits: 0 },
  substrate_moisture: { label: 'Substrate', unit: '%', digits: 1 },
  battery_v: { label: 'Battery', unit: 'V', digits: 2 },
};
export const BANDED = ['temperature_c', 'humidity_pct', 'co2_ppm'];
export const STAGES = ['spawn_run', 'pinning', 'fruiting'];

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
