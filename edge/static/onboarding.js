// The edge page's "New devices" panel: the farm's claim code and the devices that knocked with
// it (refused until adopted), each with an adopt form (room, sensor or actuator role) and a
// dismiss button. Talks to /api/onboarding; shows an adopted device's password once.
// Every string from the API is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 5000;
  const CSRF = { "X-Requested-With": "smartfarm-edge" };
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let rooms = [];
  let roles = [];
  let codeShown = false;
  let busy = false;

  const { h } = window.smartfarmDom;  // dom.js

  async function api(path, method = "GET", body = undefined) {
    const init = { method, headers: { ...CSRF, Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const detail = data && data.errors && data.errors.length
        ? data.errors.map((e) => `${e.field}: ${e.message}`).join("; ")
        : (data && data.detail) || `${response.status} ${response.statusText}`;
      const err = new Error(detail);
      err.status = response.status;
      throw err;
    }
    return data;
  }

  function say(text, isError) {
    const box = $("onboarding-message");
    box.textContent = text;
    box.className = isError ? "error" : "muted";
    box.hidden = !text;
  }

  function ago(seconds) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  function kindOptions() {
    return [h("option", { value: "sensor", text: "Sensor node" }),
      ...roles.map((r) => h("option", { value: `actuator:${r.id}`, text: r.label }))];
  }

  function pendingItem(p) {
    const room = h("select", { "aria-label": `Room for ${p.device_id}` },
      ...rooms.map((r) => h("option", { value: r.id, text: r.name || r.id })));
    const kind = h("select", { "aria-label": `What ${p.device_id} is` }, ...kindOptions());
    const adopt = h("button", { type: "button", class: "primary", text: "Adopt" });
    const dismiss = h("button", { type: "button", class: "link", text: "Dismiss" });
    adopt.addEventListener("click", () => onAdopt(p.device_id, room.value, kind.value));
    dismiss.addEventListener("click", () => onDismiss(p.device_id));
    const detail = [p.client_id && p.client_id !== p.device_id ? `client ${p.client_id}` : null,
      p.address, `asked ${p.attempts}×`, `last ${ago(p.last_seen)}`].filter(Boolean).join(" · ");
    return h("li", { class: "pending-device", "data-device": p.device_id },
      h("div", {}, h("strong", { text: p.device_id }), " ", h("span", { class: "muted", text: detail })),
      rooms.length
        ? h("div", { class: "pending-form" }, room, kind, adopt, dismiss)
        : h("p", { class: "muted", text: "Add a room to the edge config first." }));
  }

  function render(doc) {
    $("claim-code").textContent = codeShown ? doc.claim_code : "••••-••••-••••-••••";
    $("claim-toggle").textContent = codeShown ? "Hide" : "Show";
    const where = doc.broker
      ? `Port ${doc.broker.port}${doc.broker.tls_port ? ` (TLS ${doc.broker.tls_port})` : ""}`
      : "Onboarding needs the embedded broker (broker.mode = \"embedded\").";
    $("claim-where").textContent = where;
    const list = $("pending");
    // Leave the list alone while someone is choosing in it (a poll must not reset a select).
    if (list.contains(document.activeElement) && document.activeElement.tagName === "SELECT") return;
    list.replaceChildren(...doc.pending.map(pendingItem));
    $("pending-empty").hidden = doc.pending.length > 0;
  }

  async function load() {
    if ($("app").hidden || busy) return;
    try {
      if (!roles.length) roles = (await api("/api/vocabulary")).actuator_roles;
      rooms = await api("/api/rooms");
      const doc = await api("/api/onboarding");
      $("onboarding-section").hidden = false;
      render(doc);
    } catch (err) {
      if (err.status !== 401) say(`New devices: ${err.message}`, true);
    }
  }

  async function run(fn) {
    busy = true;
    try {
      await fn();
    } catch (err) {
      say(err.message, true);
    } finally {
      busy = false;
    }
    await load();
  }

  function onAdopt(deviceId, roomId, kindValue) {
    const [kind, role] = kindValue.split(":");
    const body = { room_id: roomId, kind };
    if (role) body.actuator = role;
    return run(async () => {
      const made = await api(`/api/onboarding/${encodeURIComponent(deviceId)}/adopt`, "POST", body);
      const box = $("adopted");
      box.replaceChildren(
        h("p", {}, h("strong", { text: `${made.device_id} adopted into ${made.room_id}.` }),
          " Its MQTT password, shown this once — put it in the device's secrets and update it:"),
        h("code", { class: "secret", text: made.password }),
        h("p", { class: "muted", text: `Username ${made.username}. Until it is updated, the device keeps trying the claim code and is refused.` }),
        h("button", { type: "button", class: "link", text: "Done", onclick: () => { box.hidden = true; box.replaceChildren(); } }));
      box.hidden = false;
      say("", false);
    });
  }

  function onDismiss(deviceId) {
    return run(async () => {
      await api(`/api/onboarding/${encodeURIComponent(deviceId)}/dismiss`, "POST", {});
      say(`${deviceId} dismissed (still refused).`, false);
    });
  }

  function onRotate() {
    if (!window.confirm("Make a new claim code? Devices flashed with the old one can no longer ask to join.")) return;
    run(async () => {
      await api("/api/onboarding/claim-code", "POST", {});
      codeShown = true;
      say("New claim code made.", false);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("claim-toggle").addEventListener("click", () => { codeShown = !codeShown; load(); });
    $("claim-rotate").addEventListener("click", onRotate);
    load();
    timer = setInterval(() => { if (!document.hidden) load(); }, POLL_MS);
    // Logging in shows #app: load at once rather than at the next tick.
    new MutationObserver(() => load()).observe($("app"), { attributes: true, attributeFilter: ["hidden"] });
  });
  window.addEventListener("pagehide", () => clearInterval(timer));
})();
