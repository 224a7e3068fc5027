// The charts' input: crosshair on hover or touch, drag-select to zoom, shift+drag to pan,
// ctrl+wheel or pinch to zoom, double-click to reset, and the keyboard (arrows, +, -, 0, Esc).

import { s } from './dom.js';
import { PAD, PLOT_H } from './chart-axes.js';

export function pointerX(chart, event) {
  const rect = chart.svg.getBoundingClientRect();
  const scale = chart._g ? chart._g.width / rect.width : 1;
  return (event.clientX - rect.left) * scale;
}

export function bindInput(chart) {
  const svg = chart.svg;
  svg.addEventListener('pointermove', (event) => {
    const g = chart._g;
    if (!g) return;
    if (chart._pointers.has(event.pointerId)) chart._pointers.set(event.pointerId, pointerX(chart, event));
    if (chart._pointers.size === 2 && chart._pinch) {
      const [a, b] = [...chart._pointers.values()];
      const now = Math.abs(a - b);
      if (now > 10 && chart._pinch.dist > 10) {
        const factor = chart._pinch.dist / now;
        const center = g.time((a + b) / 2);
        chart._pinch.dist = now;
        chart.zoom(factor, center);
      }
      return;
    }
    const px = pointerX(chart, event);
    if (chart._drag) {
      chart._drag.x1 = px;
      drawSelection(chart);
      if (chart._drag.pan) {
        const dt = ((chart._drag.x0 - px) / g.plotW) * (chart._drag.view.to - chart._drag.view.from);
        chart._drag.shift = dt;
      }
    }
    if (px >= PAD.left && px <= PAD.left + g.plotW) chart._showCursor(g.time(px));
  });
  // A finger lifted leaves the values shown (a tap reads them); a mouse leaving hides them.
  svg.addEventListener('pointerleave', (event) => {
    if (event.pointerType !== 'touch' && !chart._drag) chart._hideCursor();
  });
  svg.addEventListener('pointerdown', (event) => {
    const px = pointerX(chart, event);
    if (event.pointerType === 'touch') {
      chart._pointers.set(event.pointerId, px);
      if (chart._pointers.size === 2) {
        const [a, b] = [...chart._pointers.values()];
        chart._pinch = { dist: Math.abs(a - b) };
      }
      if (chart._g) chart._showCursor(chart._g.time(px));
      return;
    }
    if (event.button !== 0 || !chart._g) return;
    svg.setPointerCapture(event.pointerId);
    chart._drag = { x0: px, x1: px, pan: event.shiftKey, view: { ...chart.shown }, shift: 0 };
  });
  const end = (event) => {
    chart._pointers.delete(event.pointerId);
    if (chart._pointers.size < 2) chart._pinch = null;
    const drag = chart._drag;
    chart._drag = null;
    drawSelection(chart);
    if (!drag || !chart._g || event.type === 'pointercancel') return;
    if (drag.pan) {
      if (Math.abs(drag.shift) > 0) chart._zoomTo(drag.view.from + drag.shift, drag.view.to + drag.shift);
    } else if (Math.abs(drag.x1 - drag.x0) > 8) {
      const a = chart._g.time(Math.min(drag.x0, drag.x1));
      const b = chart._g.time(Math.max(drag.x0, drag.x1));
      chart._zoomTo(a, b);
    }
  };
  svg.addEventListener('pointerup', end);
  svg.addEventListener('pointercancel', end);
  svg.addEventListener('wheel', (event) => {
    // ctrl+wheel (and a trackpad's pinch, which the browser sends as one) zooms; a plain wheel
    // scrolls the page as usual.
    if (!event.ctrlKey && !event.metaKey) return;
    event.preventDefault();
    const g = chart._g;
    if (!g) return;
    chart.zoom(event.deltaY > 0 ? 1.25 : 0.8, g.time(pointerX(chart, event)));
  }, { passive: false });
  svg.addEventListener('dblclick', () => chart._zoomTo(chart.from, chart.to));
  svg.addEventListener('focus', () => { chart._announce = true; });
  svg.addEventListener('blur', () => { chart._announce = false; chart._hideCursor(); });
  svg.addEventListener('keydown', (event) => {
    const { from, to } = chart.shown;
    const step = Math.max(chart._step(), (to - from) / 100);
    const key = event.key;
    if (key === 'ArrowLeft' || key === 'ArrowRight') {
      const dir = key === 'ArrowLeft' ? -1 : 1;
      if (event.shiftKey) chart.pan(dir * 0.25);
      else {
        const start = chart.cursor === null ? (dir > 0 ? from : to) : chart.cursor;
        chart._showCursor(Math.min(to, Math.max(from, start + dir * step)));
      }
    } else if (key === 'Home') chart._showCursor(from);
    else if (key === 'End') chart._showCursor(to);
    else if (key === '+' || key === '=') chart.zoom(0.5, chart.cursor === null ? undefined : chart.cursor);
    else if (key === '-' || key === '_') chart.zoom(2, chart.cursor === null ? undefined : chart.cursor);
    else if (key === '0') chart._zoomTo(chart.from, chart.to);
    else if (key === 'Escape') chart._hideCursor();
    else return;
    event.preventDefault();
  });
}

export function drawSelection(chart) {
  const old = chart.svg.querySelector('.selection');
  if (old) old.remove();
  const drag = chart._drag;
  if (!drag || drag.pan || !chart._overlay) return;
  const a = Math.max(PAD.left, Math.min(drag.x0, drag.x1));
  const b = Math.min(PAD.left + chart._g.plotW, Math.max(drag.x0, drag.x1));
  chart._overlay.append(s('rect', { class: 'selection', x: a, y: PAD.top, width: Math.max(0, b - a), height: PLOT_H }));
}
