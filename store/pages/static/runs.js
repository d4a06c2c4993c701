/* The runs (GET /runs as JSON), each linking to its page. */
"use strict";

(() => {
  const { el, table, call, readFailed } = Pages;
  const box = document.getElementById("runs");
  async function load() {
    const answer = await call("GET", "/runs");
    if (!answer.ok) {
      readFailed(box, answer, load);
      return;
    }
    box.replaceChildren(answer.body.length ? table(
      ["run", "name", "latest protocol version", "opened (UTC)", "by"],
      answer.body.map((r) => [el("a", { href: "/runs/" + r.id }, "run " + r.id),
                              el("a", { href: "/runs/" + r.id }, r.name), r.latest_version,
                              r.created_at, r.created_by]),
      { id: "runs-table" }) : el("p", { class: "muted" },
        "No run yet: POST a protocol to /runs (docs/pilot-record.md)."));
  }
  load();
})();
