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
      h("div", {}, h("strong", { text: p.device_id }), " ", h("span", { class: "muted", text: detail }),
        p.claim_mode ? h("span", { class: "badge", text: " claim mode" }) : null),
      rooms.length
        ? h("div", { class: "pending-form" }, room, kind, adopt, dismiss)
        : h("p", { class: "muted", text: "Add a room to the edge config first." }));
  }

  // "Node file for a new ESP32": a claim-mode ESPHome file (/api/onboarding/claim-file.yaml)
  // made for a room and a role, built once into the panel (the page's HTML stays as it is).
  function claimFileForm() {
    const id = h("input", { type: "text", id: "claim-file-id", maxlength: "64", autocomplete: "off",
      placeholder: "esp-3c71bf", pattern: "[A-Za-z0-9][A-Za-z0-9_\\-]{0,63}", required: "" });
    const room = h("select", { id: "claim-file-room" });
    const kind = h("select", { id: "claim-file-kind" });
    const host = h("input", { type: "text", id: "claim-file-host", maxlength: "253", autocomplete: "off",
      placeholder: "192.168.1.10" });
    const label = (input, text) => h("label", { for: input.id, text });
    const form = h("form", { id: "claim-file-form", class: "pending-form" },
      label(id, "Node id"), id, label(room, "Room"), room, label(kind, "It is"), kind,
      label(host, "Edge address"), host,
      h("button", { type: "submit", text: "Download node file" }));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const [k, role] = kind.value.split(":");
      const query = new URLSearchParams({ device_id: id.value.trim(), room_id: room.value, kind: k });
      if (role) query.set("actuator", role);
      if (host.value.trim()) query.set("host", host.value.trim());
      run(async () => {
        const response = await fetch(`/api/onboarding/claim-file.yaml?${query}`,
          { headers: { Accept: "application/yaml" }, credentials: "same-origin" });
        if (!response.ok) {
          const data = await response.json().catch(() => null);
          throw new Error(data && data.errors && data.errors.length
            ? data.errors.map((e) => `${e.field}: ${e.message}`).join("; ")
            : (data && data.detail) || `${response.status} ${response.statusText}`);
        }
        const url = URL.createObjectURL(await response.blob());
        const link = h("a", { href: url, download: `${id.value.trim()}.yaml` });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
        say(`Node file for ${id.value.trim()} downloaded: flash it with ESPHome, then adopt the node when it shows up below.`, false);
      });
    });
    return h("details", { class: "claim-file" },
      h("summary", { text: "Node file for a new ESP32 (claim mode)" }),
      h("p", { class: "muted", text: "An ESPHome file with this farm's claim code and no password: the node asks to join, and once you adopt it into the room it was made for, the edge hands it its password. No re-flash." }),
      form);
  }

  function fillClaimFile() {
    let box = $("claim-file-form");
    if (!box) {
      $("claim-where").after(claimFileForm());
      box = $("claim-file-form");
    }
    if (box.contains(document.activeElement)) return;
    const room = $("claim-file-room");
    const chosen = room.value;
    room.replaceChildren(...rooms.map((r) => h("option", { value: r.id, text: r.name || r.id })));
    if (chosen) room.value = chosen;
    const kind = $("claim-file-kind");
    if (!kind.options.length) kind.replaceChildren(...kindOptions());
  }

  function render(doc) {
    $("claim-code").textContent = codeShown ? doc.claim_code : "••••-••••-••••-••••";
    $("claim-toggle").textContent = codeShown ? "Hide" : "Show";
    const where = doc.broker
      ? `Port ${doc.broker.port}${doc.broker.tls_port ? ` (TLS ${doc.broker.tls_port})` : ""}`
      : "Through Mosquitto: new nodes log in as smartfarm-claim with this code (Mosquitto's password file must have it, see deploy/mosquitto/README.md).";
    $("claim-where").textContent = where;
    fillClaimFile();
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
      const done = h("button", { type: "button", class: "link", text: "Done", onclick: () => { box.hidden = true; box.replaceChildren(); } });
      if (made.claim_mode) {
        // A claim-mode node: the edge hands it its password over MQTT; nothing to copy.
        box.replaceChildren(
          h("p", {}, h("strong", { text: `${made.device_id} adopted into ${made.room_id}.` }),
            " It is in claim mode: the edge hands it its password within seconds, it keeps it and restarts with it. No re-flash needed."),
          done);
      } else {
        box.replaceChildren(
          h("p", {}, h("strong", { text: `${made.device_id} adopted into ${made.room_id}.` }),
            " Its MQTT password, shown this once — put it in the device's secrets and update it:"),
          h("code", { class: "secret", text: made.password }),
          h("p", { class: "muted", text: `Username ${made.username}. Until it is updated, the device keeps trying the claim code and is refused.` }),
          done);
      }
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
