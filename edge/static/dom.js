// The edge page's element builder, shared by app.js, onboarding.js and firmware.js (loaded
// first): h("li", {class, text, dataset, onclick, …attributes}, …children). Text is always set
// as text, never parsed as HTML.
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
});
