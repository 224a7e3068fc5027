// The edge page's element builder, shared by app.js, onboarding.js, firmware.js and sync.js
// (loaded first): h("li", {class, text, dataset, onclick, …attributes}, …children). Text is
// always set as text, never parsed as HTML. ago(iso): "just now", "5 min ago", "3 h ago", "6 Dec";
// duration(seconds): "45 s", "12 min", "2 h 5 min", "3 days".
"use strict";

window.smartfarmDom = Object.freeze({
  h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  },
  duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.round(s / 60);
    if (m < 60) return `${m} min`;
    const hours = Math.floor(m / 60), rest = m % 60;
    if (hours < 24) return rest ? `${hours} h ${rest} min` : `${hours} h`;
    const days = Math.round(hours / 24);
    return days === 1 ? "1 day" : `${days} days`;
  },
  ago(iso) {
    if (!iso) return "";
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return new Date(iso).toLocaleDateString(undefined, { day: "numeric", month: "short" });
  },
});
