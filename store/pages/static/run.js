/* A pilot run: its report (GET /runs/{id}/report?format=json: the protocol version, approvals,
   decision and criteria, deviations, allocation and sign-off state), the form to sign, the
   form to record a deviation and the form to close one (cause and action). */
"use strict";

(() => {
  const { el, text, badge, table, num, call, readFailed, writeForm, field } = Pages;
  const id = location.pathname.replace(/^\/runs\//, "").replace(/\/$/, "");
  const base = "/runs/" + id;
  document.getElementById("full-report").href = base + "/report?format=json";
  document.getElementById("html-report").href = base + "/report?format=html";
  const linkFailed = (words) => {
    const message = el("p", {});
    Pages.say(message, "bad", words);
    document.getElementById("problem").replaceChildren(message);
  };
  Pages.guardedLink(document.getElementById("html-report"), `pilot-run-${id}-report.html`, linkFailed);
  Pages.guardedLink(document.getElementById("full-report"), `pilot-run-${id}-report.json`, linkFailed);
  const put = (elementId, ...nodes) => document.getElementById(elementId).replaceChildren(...nodes);

  function criterionRow(scope, c) {
    return [scope, c.name, badge(c.result), num(c.value), num(c.limit),
            el("span", { class: "prose" }, text(c.note))];
  }

  function render(r) {
    const v = r.protocol_version;
    document.getElementById("title").textContent = `Pilot run ${v.run_id}: ${v.run}`;
    document.title = `Pilot run ${v.run} — store`;
    put("state", badge(r.state));
    put("state-words", r.state === "awaiting"
      ? `Awaiting the signatures of ${r.awaiting.join(", ")}. ` : "", r.state_words);

    const a = r.approvals;
    put("protocol", `Protocol version ${v.version} of ${v.latest_version}, created at ${v.created_at} by ${v.created_by}; SHA-256 `,
        el("span", { class: "mono" }, v.sha256), ". ",
        a.approved ? badge("pass", "✓ approved by every function") : badge("fail", "✗ not approved by every function"),
        " ",
        a.before_first_unit ? badge("pass", "✓ before the first unit")
                            : badge("warn", "⚠ after the first unit"));
    put("approval-notes", ...a.notes.map((n) => el("li", {}, n)));
    put("approvals", table(["function", "person", "decision", "when (UTC)", "before the first unit?", "reason"],
      a.required.map((f) => {
        const got = a.by_function.find((x) => x.function === f);
        if (!got) return [f, "", badge("awaiting", "⏳ not yet"), "", "", ""];
        const early = a.first_unit === null || got.at <= a.first_unit;
        return [f, got.person, badge(got.decision), got.at,
                a.first_unit === null ? "yes (no unit record yet)"
                  : early ? "yes, before the first unit" : "no, after the first unit",
                el("span", { class: "prose" }, text(got.reason))];
      }), { id: "approvals-table" }));

    put("decision", "Decision of the report: ", badge(r.decision), ` — ${r.criteria_count.pass} pass, ` +
        `${r.criteria_count.fail} fail, ${r.criteria_count.insufficient} insufficient; ${r.units} units.`);
    const rows = [];
    for (const op of r.operations) for (const c of op.criteria) rows.push(criterionRow(op.operation, c));
    for (const ch of r.characteristics) if (ch.criterion) rows.push(criterionRow(`${ch.operation} ${ch.name}`, ch.criterion));
    for (const c of r.run_criteria) rows.push(criterionRow("run", c));
    put("criteria", table(["scope", "criterion", "result", "value", "limit", "note"], rows, { id: "criteria-table" }));

    const d = r.deviations;
    put("deviation-counts", `${d.count} deviation${d.count === 1 ? "" : "s"}, ${d.open.length} open. Open by severity: ` +
        ["critical", "major", "minor"].map((s) => `${s} ${d.open_by_severity[s]}`).join(", ") + ".");
    put("deviations", d.items.length ? table(
      ["id", "state", "severity", "description", "operation / station", "units", "action", "recorded", "closed"],
      d.items.map((x) => [x.id, badge(x.open ? "open" : "closed"), badge(x.severity),
        el("span", { class: "prose" }, x.description),
        [x.operation, x.station].filter((s) => s).join(" / "),
        [x.serials.join(" "), x.window ? `window ${x.window.start} – ${x.window.end}` : ""].filter((s) => s).join("; "),
        el("span", { class: "prose" }, x.action), `${x.at} by ${x.person}`,
        x.closed ? el("span", { class: "prose" }, `${x.closed.at} by ${x.closed.person}: ${x.closed.cause} — ${x.closed.action}`) : ""]),
      { id: "deviations-table" }) : el("p", { class: "muted" }, "None."));

    const al = r.allocation;
    const counted = Object.entries(al.units).filter(([, n]) => n > 0);
    put("allocation",
      table(["disposition", "units"], [...counted.map(([k, n]) => [k, n]), ["not allocated yet", al.unallocated]],
            { id: "allocation-table" }),
      al.field_test_users.length ? el("p", {}, "Field-test users: " + al.field_test_users.join(", ")) : "",
      al.criteria.length ? table(["protocol's requirement", "result", "units", "at least"],
        al.criteria.map((c) => [c.name, badge(c.result), num(c.value), num(c.limit)]), { id: "allocation-criteria" })
        : el("p", { class: "muted" }, "The protocol asks for no allocation."));

    put("signoffs", r.signoffs.length ? table(
      ["function", "person", "decision", "when (UTC)", "flags", "reason", "meaning"],
      r.signoffs.map((s) => [s.function, s.person, badge(s.decision), s.at,
        el("span", {}, s.override ? badge("override") : "", " ", s.stale ? badge("stale") : "",
           " ", s.current_version ? "" : `(version ${s.version})`,
           s.exceptions.length ? el("div", { class: "prose" }, "exceptions: " + s.exceptions.join("; ")) : ""),
        el("span", { class: "prose" }, text(s.reason)), el("span", { class: "prose" }, s.meaning)]),
      { id: "signoffs-table" }) : el("p", { class: "muted" }, "No signature yet."));
    const open = d.items.filter((x) => x.open);
    const closing = document.getElementById("close-deviation");
    const picked = closing.value;
    closing.replaceChildren(...(open.length
      ? open.map((x) => el("option", { value: String(x.id) },
          `${x.id}: ${x.severity} — ${x.description.slice(0, 60)}`))
      : [el("option", { value: "" }, "no open deviation")]));
    if (open.some((x) => String(x.id) === picked)) closing.value = picked;
    const select = document.getElementById("sign-function");
    const chosen = select.value;
    select.replaceChildren(...a.required.map((f) => el("option", { value: f }, f)));
    if (a.required.includes(chosen)) select.value = chosen;
  }

  async function load() {
    const answer = await call("GET", base + "/report?format=json");
    const problem = document.getElementById("problem");
    if (!answer.ok) {
      readFailed(problem, answer, load);
      return;
    }
    problem.replaceChildren();
    render(answer.body);
  }

  function utc(value) {
    return value ? value + (value.length === 16 ? ":00Z" : "Z") : undefined;
  }

  writeForm(document.getElementById("sign"), base + "/signoffs", (data) => ({
    function: data.get("function"), decision: data.get("decision"),
    reason: field(data, "reason") || null,
  }), (s) => `${s.person} signed ${s.decision} for ${s.function} at ${s.at}` +
             (s.override ? " (an override of the report's decision)" : ""));
  writeForm(document.getElementById("deviate"), base + "/deviations", (data) => {
    const serials = (field(data, "serials") || "").split(/[\s,]+/).filter((s) => s);
    const start = utc(field(data, "start"));
    const end = utc(field(data, "end"));
    if ((start === undefined) !== (end === undefined)) throw new Error("a window needs a start and an end");
    if (!serials.length && start === undefined) throw new Error("name the units: serials or a window");
    return { description: field(data, "description") || "", severity: data.get("severity"),
             operation: field(data, "operation"), station: field(data, "station"), serials,
             window: start === undefined ? undefined : { start, end },
             action: field(data, "action") || "" };
  }, (x) => `deviation ${x.id} recorded (${x.severity}, open)`);
  const closing = document.getElementById("close-deviation");
  writeForm(document.getElementById("close"),
    () => `${base}/deviations/${encodeURIComponent(closing.value)}/close`, (data) => {
      if (!closing.value) throw new Error("there is no open deviation to close");
      return { cause: field(data, "cause") || "", action: field(data, "action") || "" };
    }, (x) => `deviation ${x.id} closed by ${x.closed.person} at ${x.closed.at}`);
  for (const form of document.querySelectorAll("form.write")) form.addEventListener("written", load);
  load();
})();
