// The live page's deviation form: POST /deviations with the station token (docs/pilot-record.md,
// "Deviations on the line PC"). The token is sent only as "Authorization: Bearer", kept in
// this tab's sessionStorage, never in a URL. Answers are shown with textContent, in words.
"use strict";

(() => {
  const TOKEN_KEY = "collector.token";
  const form = document.getElementById("deviation-form");
  const result = document.getElementById("deviation-result");
  if (!form || !result) return;
  const field = (name) => form.elements.namedItem(name);

  // The stations from /status (a rack's slots are one station), and each one's operation.
  const operations = {};
  async function loadStations() {
    let stations = {};
    try {
      stations = (await (await fetch("status")).json()).stations || {};
    } catch (e) {
      return; // the live page says the collector cannot be reached
    }
    const select = field("station");
    for (const [name, st] of Object.entries(stations)) {
      const station = st && st.slot !== null && st.slot !== undefined && st.station ? st.station : name;
      if (station in operations) continue;
      operations[station] = (st && st.operation) || "";
      const option = document.createElement("option");
      option.value = station;
      option.textContent = station;
      select.append(option);
    }
    select.dispatchEvent(new Event("change"));
  }

  field("station").addEventListener("change", () => {
    const operation = field("operation");
    if (!operation.dataset.touched) operation.value = operations[field("station").value] || "";
  });
  field("operation").addEventListener("input", (e) => { e.target.dataset.touched = "1"; });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) field("token").value = saved;

  function show(kind, text) {
    result.className = `answer ${kind}`;
    result.textContent = `${kind === "ok" ? "✔" : "✖"} ${text}`;
  }

  // A datetime-local value is the tablet's local time; the collector takes RFC 3339 (UTC).
  // The form says which zone it reads them in, so a tablet set to the wrong zone shows it.
  function utc(value) {
    return value ? new Date(value).toISOString() : null;
  }
  const zone = document.getElementById("deviation-zone");
  if (zone) {
    const minutes = -new Date().getTimezoneOffset();
    const hours = String(Math.floor(Math.abs(minutes) / 60)).padStart(2, "0");
    const offset = `UTC${minutes < 0 ? "-" : "+"}${hours}:${String(Math.abs(minutes) % 60).padStart(2, "0")}`;
    let name = "";
    try { name = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { name = ""; }
    zone.textContent = `Times in this device's zone: ${name ? name + ", " : ""}${offset}. ` +
      "The collector keeps them in UTC.";
  }

  function body() {
    const text = (name) => field(name).value.trim();
    const out = {
      description: field("description").value,
      severity: text("severity"),
      station: text("station"),
      action: field("action").value,
    };
    for (const name of ["operation", "device", "who"]) {
      if (text(name)) out[name] = text(name);
    }
    const serials = text("serials").split(/[\s,;]+/).filter(Boolean);
    if (serials.length) out.serials = serials;
    const start = utc(field("start").value);
    const end = utc(field("end").value);
    if (start || end) out.window = { start, end };
    return out;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = field("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const sent = body();
    try {
      const answer = await fetch("deviations", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify(sent),
      });
      let detail = "";
      let made = null;
      try {
        made = await answer.json();
        detail = typeof made.detail === "string" ? made.detail : JSON.stringify(made.detail || "");
      } catch (e) {
        detail = answer.statusText;
      }
      if (answer.status === 201) {
        const span = sent.window ? `, units from ${sent.window.start} to ${sent.window.end} (UTC)` : "";
        show("ok", `Deviation ${made.seq} recorded at ${made.station} (${made.severity})${span}: kept on this PC until the central store has it`);
        for (const name of ["description", "serials", "action", "start", "end"]) field(name).value = "";
      } else if (answer.status === 401) {
        show("bad", `401 not signed in: the token is missing or wrong — ${detail}`);
      } else if (answer.status === 403) {
        show("bad", `403 not allowed: ${detail}`);
      } else {
        show("bad", `${answer.status} not recorded: ${detail}`);
      }
    } catch (e) {
      show("bad", "not recorded: the collector cannot be reached; try again");
    } finally {
      button.disabled = false;
    }
  });

  loadStations();
})();
