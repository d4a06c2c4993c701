/* Shared by the store's pages. Everything from the store is put on the page as text
   (textContent, text nodes, attribute values), never parsed as HTML: serials, remarks and
   descriptions are typed on the shop floor and may hold anything. The bearer token is typed
   by the person, kept in this tab's sessionStorage (so reads behind http.read_token keep
   working from page to page) and sent only in the Authorization header, never in a URL. */
"use strict";

const Pages = (() => {
  const TOKEN_KEY = "store.token";
  // Set when a read of this tab was refused for want of a token (http.read_token is on).
  const GUARDED_KEY = "store.reads-guarded";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function text(value) {
    return value === null || value === undefined ? "" : String(value);
  }

  const BADGES = {
    pass: ["ok", "✓ pass"], fail: ["bad", "✗ fail"], insufficient: ["warn", "? insufficient"],
    go: ["ok", "✓ GO"], "no-go": ["bad", "✗ NO-GO"], awaiting: ["warn", "⏳ AWAITING"],
    open: ["bad", "● open"], closed: ["ok", "○ closed"],
    approve: ["ok", "✓ approve"], reject: ["bad", "✗ reject"],
    scrap: ["bad", "✗ scrap"], rework: ["warn", "↻ rework"],
    critical: ["bad", "▲▲ critical"], major: ["warn", "▲ major"], minor: ["none", "△ minor"],
    in_spec: ["ok", "✓ in spec"], out_of_spec: ["bad", "✗ OUT OF SPEC"],
    stale: ["warn", "⚠ stale"], override: ["warn", "⚠ OVERRIDE"],
  };

  /* A state as a word and a symbol, coloured as a third signal. */
  function badge(state, words) {
    const [kind, label] = BADGES[state] || ["none", "• " + text(state)];
    return el("span", { class: "badge " + kind }, words || label);
  }

  function table(headers, rows, attrs) {
    const head = el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)));
    const body = rows.map((cells) =>
      el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c)))));
    return el("div", { class: "scroll" }, el("table", attrs || {}, el("thead", {}, head), el("tbody", {}, body)));
  }

  function num(value, digits) {
    if (value === null || value === undefined) return "";
    if (typeof value !== "number") return String(value);
    // Four decimals at most: a ratio of 0.9166666 reads as 0.9167.
    return digits !== undefined ? value.toFixed(digits) : String(+value.toFixed(4));
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function setToken(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    for (const input of document.querySelectorAll("input.token")) input.value = value || "";
  }

  /* The store's answer in words: what happened, then the store's own detail. */
  function problem(status, detail) {
    const why = {
      401: "not signed in: the token is missing or belongs to nobody",
      403: "not allowed: this person does not act for that function",
      404: "not found",
      409: "refused: it conflicts with the record",
      413: "refused: too large",
      422: "not accepted: a field is wrong",
    }[status] || "failed";
    return `${status} ${why}` + (detail ? ` — ${detail}` : "");
  }

  function detailOf(body) {
    if (!body || body.detail === undefined) return "";
    if (typeof body.detail === "string") return body.detail;
    return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }

  async function call(method, path, body, tokenValue) {
    const headers = { Accept: "application/json" };
    const given = tokenValue === undefined ? token() : tokenValue;
    if (given) headers.Authorization = "Bearer " + given;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", cache: "no-store",
      });
    } catch (err) {
      return { ok: false, status: 0, body: null, words: "the store did not answer (" + err.message + ")" };
    }
    if (method === "GET" && response.status === 401) sessionStorage.setItem(GUARDED_KEY, "1");
    let parsed = null;
    try { parsed = await response.json(); } catch (err) { parsed = null; }
    return {
      ok: response.ok, status: response.status, body: parsed,
      words: response.ok ? "" : problem(response.status, detailOf(parsed)),
    };
  }

  function say(node, kind, words) {
    node.className = "message " + kind;
    node.setAttribute("role", kind === "bad" ? "alert" : "status");
    node.textContent = words;
  }

  /* A read the store refused for want of a token (http.read_token): ask for one here. */
  function readFailed(container, answer, retry) {
    container.replaceChildren();
    const message = el("p", {});
    say(message, "bad", answer.words);
    container.append(message);
    if (answer.status === 401) {
      const input = el("input", { type: "password", class: "token", autocomplete: "off",
                                  "aria-label": "token for reading" });
      const form = el("form", { class: "actions" },
        el("label", {}, "This store needs a token to read (yours or the read token)", input),
        el("button", { type: "submit" }, "Read"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        setToken(input.value.trim());
        retry();
      });
      container.append(form);
    }
  }

  /* A write form: its token field, its submit, the answer in words. ``build`` returns the
     body from the form's fields, or throws an Error whose message is shown. */
  function writeForm(form, path, build, done) {
    const message = form.querySelector(".message");
    const tokenInput = form.querySelector("input.token");
    tokenInput.value = token();
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const given = tokenInput.value.trim();
      if (!given) {
        say(message, "bad", "type your token first: every write is signed by a person");
        return;
      }
      let body;
      try {
        body = build(new FormData(form));
      } catch (err) {
        say(message, "bad", err.message);
        return;
      }
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      say(message, "warn", "sending…");
      const answer = await call("POST", typeof path === "function" ? path() : path, body, given);
      button.disabled = false;
      if (answer.ok) {
        setToken(given);
        say(message, "ok", done(answer.body));
        form.dispatchEvent(new CustomEvent("written", { detail: answer.body }));
      } else {
        say(message, "bad", answer.words);
      }
    });
  }

  /* A link to something behind http.read_token (a report, a CSV). A browser cannot send a
     bearer token when it follows a link, so once this tab has seen reads refused, the link
     fetches with the tab's token and saves the answer as ``filename`` (an HTML report saved
     so opens from disk with its styles). Otherwise it stays a plain link. ``onProblem``
     gets a refusal in words. */
  function guardedLink(link, filename, onProblem) {
    link.addEventListener("click", async (event) => {
      const given = token();
      if (!given || !sessionStorage.getItem(GUARDED_KEY)) return;
      event.preventDefault();
      let response;
      try {
        response = await fetch(link.href, { headers: { Authorization: "Bearer " + given },
                                            credentials: "omit", cache: "no-store" });
      } catch (err) {
        onProblem("the store did not answer (" + err.message + ")");
        return;
      }
      if (!response.ok) {
        let detail = "";
        try { detail = detailOf(await response.json()); } catch (err) { detail = ""; }
        onProblem(problem(response.status, detail));
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const save = el("a", { href: url, download: filename, class: "hidden" });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }

  /* Optional text fields: empty means absent. */
  function field(data, name) {
    const value = (data.get(name) || "").toString().trim();
    return value === "" ? undefined : value;
  }

  function unitLink(serial) {
    return el("a", { href: "/units/" + encodeURIComponent(serial), class: "unit" }, serial);
  }

  return { el, text, badge, table, num, token, setToken, call, say, readFailed, writeForm,
           field, unitLink, problem, guardedLink };
})();
