// Firmware updates panel of the edge page: the images stored on this edge, the version each
// device runs (from its status messages) and the update offered to it, with Update / Withdraw.
// Reads GET /api/firmware and /api/devices; offers with POST /api/devices/{id}/firmware; adds an
// image with POST /api/firmware (the file as the body; the edge computes its checksums).
"use strict";

(() => {
  const POLL_MS = 4000;
  const CSRF = { "X-Requested-With": "smartfarm-edge" };
  const STATES = {
    offered: "offered, waiting for the device",
    downloading: "downloading / installing",
    installed: "installed",
    failed: "failed",
    expired: "expired",
  };
  const $ = (id) => document.getElementById(id);

  const { h, ago } = window.smartfarmDom;  // dom.js

  function size(bytes) {
    return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MB` : `${Math.round(bytes / 1024)} KB`;
  }

  async function call(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: { ...CSRF } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(path, opts);
    const doc = resp.status === 204 ? null : await resp.json().catch(() => null);
    if (!resp.ok) {
      const err = new Error((doc && ((doc.errors && doc.errors[0] && doc.errors[0].message)
        || doc.detail || doc.title)) || `HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return doc;
  }

  function say(text, bad) {
    const note = $("firmware-note");
    note.textContent = text;
    note.className = bad ? "error small" : "muted small";
    note.hidden = !text;
  }

  function updateText(u) {
    if (!u) return "";
    let text = `${u.version}: ${STATES[u.state] || u.state}`;
    if (u.state === "installed") text += ` ${ago(u.installed_at)}`;
    else if (u.state === "offered") text += ` (${ago(u.offered_at)} by ${u.offered_by})`;
    if (u.detail) text += ` — ${u.detail}`;
    return text;
  }

  function deviceRow(device, running, update, images) {
    const fitting = images.filter((i) => i.devices.length === 0 || i.devices.includes(device.id));
    const role = device.role ? (roles[device.role] || device.role) : "Sensor";
    const label = device.name && device.name !== device.id ? `${role} · ${device.name}` : role;
    const select = h("select", { "aria-label": `Firmware for ${label}` },
      fitting.map((i) => h("option", { value: i.version, text: i.version })));
    const open = update && ["offered", "downloading"].includes(update.state);
    const offer = h("button", {
      type: "button", class: "small", disabled: fitting.length === 0,
      "aria-label": `Update ${label}`, text: "Update",
      onclick: async () => {
        offer.disabled = true;
        try {
          await call("POST", `/api/devices/${encodeURIComponent(device.id)}/firmware`,
            { version: select.value });
          say(`Firmware ${select.value} offered to ${label}.`, false);
        } catch (err) {
          say(`${label}: ${err.message}`, true);
        }
        offer.disabled = false;
        refresh();
      },
    });
    const withdraw = open ? h("button", {
      type: "button", class: "small link", "aria-label": `Withdraw update of ${label}`,
      text: "Withdraw",
      onclick: async () => {
        try {
          await call("DELETE", `/api/devices/${encodeURIComponent(device.id)}/firmware`);
          say(`Update of ${label} withdrawn.`, false);
        } catch (err) {
          say(`${label}: ${err.message}`, true);
        }
        refresh();
      },
    }) : null;
    return h("tr", { dataset: { device: device.id, state: update ? update.state : "" } },
      h("th", { scope: "row", text: `${label} (${device.room_id})`, title: device.id }),
      h("td", { class: "fw-running", text: running || "not reported" }),
      h("td", { class: `fw-update ${update ? update.state : ""}`, text: updateText(update) }),
      h("td", { class: "fw-actions" }, fitting.length ? [select, offer] : h("span", {
        class: "muted small", text: "no image for it" }), withdraw));
  }

  const MAX_IMAGE_BYTES = 8 * 1024 * 1024;  // edge.firmware.MAX_IMAGE_BYTES

  // "Add an image": built once under the image list (the page's HTML stays as it is).
  function uploadForm() {
    const file = h("input", { type: "file", id: "firmware-file", accept: ".bin", required: true });
    const version = h("input", { type: "text", id: "firmware-version", maxlength: "40",
      autocomplete: "off", placeholder: "1.3.0", required: true });
    const device = h("select", { id: "firmware-device" });
    const send = h("button", { type: "submit", class: "small", text: "Add image" });
    const label = (input, text) => h("label", { for: input.id, text });
    const form = h("form", { id: "firmware-upload", class: "firmware-upload small" },
      h("h3", { class: "small", text: "Add an image" }),
      label(file, "Image (.ota.bin)"), file, label(version, "Version"), version,
      label(device, "For"), device, send);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const chosen = file.files[0];
      if (!chosen) return;
      if (chosen.size > MAX_IMAGE_BYTES) {
        say(`${chosen.name} is ${size(chosen.size)}: an OTA image is at most 8 MB.`, true);
        return;
      }
      const query = new URLSearchParams({ version: version.value.trim(), filename: chosen.name });
      if (device.value) query.set("device", device.value);
      send.disabled = true;
      try {
        const resp = await fetch(`/api/firmware?${query}`, {
          method: "POST", credentials: "same-origin", body: chosen,
          headers: { ...CSRF, "Content-Type": "application/octet-stream" },
        });
        const doc = await resp.json().catch(() => null);
        if (!resp.ok) {
          throw new Error((doc && ((doc.errors && doc.errors[0]
            && `${doc.errors[0].field}: ${doc.errors[0].message}`) || doc.detail))
            || `HTTP ${resp.status}`);
        }
        say(`Firmware ${doc.version} added (sha256 ${doc.sha256.slice(0, 12)}, ${size(doc.size)}).`, false);
        form.reset();
      } catch (err) {
        say(`Adding the image: ${err.message}`, true);
      }
      send.disabled = false;
      refresh();
    });
    return form;
  }

  function fillUpload(devices) {
    let form = $("firmware-upload");
    if (!form) {
      $("firmware-images").after(uploadForm());
      form = $("firmware-upload");
    }
    if (form.contains(document.activeElement)) return;
    const select = $("firmware-device");
    const chosen = select.value;
    select.replaceChildren(h("option", { value: "", text: "any device" }),
      ...devices.map((d) => h("option", { value: d.id, text: `${d.id} (${d.room_id})` })));
    select.value = chosen;
  }

  let busy = false;
  let roles = null;  // actuator role → its label (the edge's vocabulary)
  async function refresh() {
    const app = $("app");
    if (!app || app.hidden || busy) return;
    busy = true;
    try {
      if (roles === null) {
        const v = await call("GET", "/api/vocabulary");
        roles = Object.fromEntries(v.actuator_roles.map((r) => [r.id, r.label]));
      }
      const [fw, devices] = await Promise.all([call("GET", "/api/firmware"), call("GET", "/api/devices")]);
      const updates = Object.fromEntries(fw.updates.map((u) => [u.device_id, u]));
      const focused = document.activeElement && $("firmware-devices").contains(document.activeElement);
      if (!focused) {
        $("firmware-devices").replaceChildren(...devices.map((d) =>
          deviceRow(d, (fw.devices[d.id] || {}).firmware, updates[d.id], fw.images)));
      }
      $("firmware-images").replaceChildren(...fw.images.map((i) => h("li", {},
        h("strong", { text: i.version }),
        ` · ${i.devices.length ? i.devices.join(", ") : "any device"} · ${size(i.size)}`
        + ` · sha256 ${i.sha256.slice(0, 12)} · added ${ago(i.added_at)}`)));
      $("firmware-empty").hidden = fw.images.length > 0;
      fillUpload(devices);
    } catch (err) {
      if (err.status !== 401) say(`Firmware: ${err.message}`, true);
    } finally {
      busy = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    refresh();
    setInterval(refresh, POLL_MS);
  });
})();
