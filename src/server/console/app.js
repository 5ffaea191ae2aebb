// The patchbay console: a page per hash route, everything read through the
// admin API with the token kept in sessionStorage (never in a URL).
"use strict";

const KEY = "patchbay-admin-token";
let timer = null;

function token() {
  return sessionStorage.getItem(KEY);
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);
    route();
    throw new Error("the admin token was refused");
  }
  const text = await resp.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch (_) {
    /* metrics text */
  }
  if (!resp.ok) {
    throw new Error((body && body.error) || resp.status + " " + text);
  }
  return body;
}

// Elements without innerHTML: every value from the API is text.
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (k === "text") e.textContent = v;
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function json(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function when(t) {
  return t ? new Date(t).toLocaleString() : "";
}

function badge(status) {
  return el("span", { class: "badge " + status, "data-status": status }, status);
}

function view(...children) {
  const v = document.getElementById("view");
  v.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return v;
}

function failure(e) {
  view(el("p", { class: "error", "data-testid": "error" }, String(e.message || e)));
}

// ---- pages ----

async function overview() {
  const chart = (id, title) =>
    el("figure", {}, el("figcaption", {}, title), el("svg", { id, "data-testid": id, viewBox: "0 0 600 120", preserveAspectRatio: "none" }));
  view(
    el("h1", {}, "Overview"),
    el("p", {}, "Rates over the last minutes, from the engine's /metrics, sampled every 2 s."),
    chart("chart-runs", "Runs ended per second (completed / failed)"),
    chart("chart-deliveries", "Webhook deliveries per second (accepted / rejected)"),
    el("div", { id: "totals" })
  );
  const samples = [];
  const sum = (text, name, pred) =>
    text
      .split("\n")
      .filter((l) => l.startsWith(name + "{") && pred(l))
      .reduce((a, l) => a + Number(l.split(" ").pop()), 0);
  async function sample() {
    const text = await api("/metrics");
    const s = {
      t: Date.now(),
      completed: sum(text, "patchbay_runs_ended_total", (l) => l.includes('status="completed"')),
      failed: sum(text, "patchbay_runs_ended_total", (l) => l.includes('status="failed"')),
      accepted: sum(text, "patchbay_deliveries_total", (l) => l.includes('outcome="accepted"')),
      rejected: sum(text, "patchbay_deliveries_total", (l) => l.includes('outcome="rejected')),
    };
    samples.push(s);
    if (samples.length > 90) samples.shift();
    draw("chart-runs", samples, ["completed", "failed"]);
    draw("chart-deliveries", samples, ["accepted", "rejected"]);
    const totals = document.getElementById("totals");
    if (totals) {
      totals.textContent = `Since start: ${s.completed} runs completed, ${s.failed} failed; ${s.accepted} deliveries accepted, ${s.rejected} rejected.`;
    }
  }
  await sample();
  timer = setInterval(() => sample().catch(failure), 2000);
}

function draw(id, samples, series) {
  const svg = document.getElementById(id);
  if (!svg) return;
  const rates = series.map((name) =>
    samples.slice(1).map((s, i) => (s[name] - samples[i][name]) / Math.max((s.t - samples[i].t) / 1000, 0.001))
  );
  const max = Math.max(1, ...rates.flat());
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  rates.forEach((r, k) => {
    const line = document.createElementNS(ns, "polyline");
    const pts = r.map((v, i) => `${(i / 89) * 600},${120 - (v / max) * 110}`).join(" ");
    line.setAttribute("points", pts);
    line.setAttribute("class", "series" + k);
    svg.append(line);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "12");
  label.textContent = `max ${max.toFixed(1)}/s`;
  svg.append(label);
}

function runsTable(runs, withReplay) {
  return el(
    "table",
    { "data-testid": "runs" },
    el("thead", {}, el("tr", {}, ["Run", "Recipe", "Status", "Created", "Failed step", withReplay ? "" : null].filter((h) => h !== null).map((h) => el("th", {}, h)))),
    el(
      "tbody",
      {},
      runs.map((r) =>
        el(
          "tr",
          { "data-run": r.id },
          el("td", {}, el("a", { href: "#/runs/" + r.id }, r.id)),
          el("td", {}, r.recipe),
          el("td", {}, badge(r.status)),
          el("td", {}, when(r.created_at)),
          el("td", {}, r.failed_step || ""),
          withReplay ? el("td", {}, el("button", { type: "button", "data-replay": r.id, onclick: () => replay(r.id) }, "Replay")) : null
        )
      )
    )
  );
}

async function runs(params) {
  const q = new URLSearchParams(params);
  const filters = el(
    "form",
    { class: "filters", id: "filters" },
    el("input", { name: "recipe", placeholder: "recipe", value: q.get("recipe") || "" }),
    el(
      "select",
      { name: "status" },
      ["", "queued", "running", "completed", "failed", "filtered", "replayed"].map((s) => {
        const o = el("option", { value: s }, s || "any status");
        if (s === (q.get("status") || "")) o.selected = true;
        return o;
      })
    ),
    el("input", { name: "q", placeholder: "text (email, id, error…)", value: q.get("q") || "" }),
    el("button", { type: "submit" }, "Filter"),
    el("label", {}, el("input", { type: "checkbox", id: "live", checked: "checked" }), " live")
  );
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new URLSearchParams(new FormData(filters));
    for (const [k, v] of [...f]) if (!v) f.delete(k);
    location.hash = "#/runs?" + f.toString();
  });
  const list = el("div", { id: "list" });
  view(el("h1", {}, "Runs"), filters, list);
  async function load() {
    const page = await api("/admin/runs?" + q.toString());
    const older = page.next
      ? el("a", { href: "#/runs?" + new URLSearchParams(Object.assign(Object.fromEntries(q), { before: page.next })).toString(), "data-testid": "older" }, "Older →")
      : null;
    list.replaceChildren(page.runs.length ? runsTable(page.runs, false) : el("p", {}, "No runs."), older || "");
  }
  await load();
  timer = setInterval(() => {
    const live = document.getElementById("live");
    if (live && live.checked && !q.get("before")) load().catch(failure);
  }, 2000);
}

async function run(id) {
  const d = await api("/admin/runs/" + encodeURIComponent(id));
  const r = d.run;
  const actions =
    r.status === "failed"
      ? el("button", { type: "button", "data-testid": "replay", onclick: () => replay(r.id) }, "Replay")
      : null;
  const steps = d.steps.map((s, i) =>
    el(
      "li",
      { class: "step " + s.status, "data-step": s.id },
      el("div", { class: "step-head" }, el("strong", {}, `${i + 1}. ${s.id}`), " ", el("code", {}, s.action), " ", badge(s.status),
        ` ${s.attempts} attempt(s), ${s.duration_ms} ms`, s.fallback_of ? ` (fallback of ${s.fallback_of})` : ""),
      el("h4", {}, "Request"),
      el("div", { "data-testid": "step-request" }, json(s.input)),
      s.error ? [el("h4", {}, "Error"), el("div", { "data-testid": "step-error" }, json(s.error))] : [],
      el("h4", {}, "Response"),
      json(s.output)
    )
  );
  view(
    el("h1", {}, "Run ", el("code", {}, r.id)),
    el("p", {}, badge(r.status), ` ${r.recipe} (version ${r.recipe_version}), created ${when(r.created_at)}, updated ${when(r.updated_at)}`),
    actions,
    r.error ? [el("h3", {}, "Error"), json(r.error)] : [],
    el("h3", {}, "Steps"),
    el("ol", { class: "timeline", "data-testid": "timeline" }, steps),
    el("h3", {}, "Event"),
    json(d.event)
  );
  if (r.status === "queued" || r.status === "running") {
    timer = setTimeout(() => route(), 1000);
  }
}

async function replay(id) {
  try {
    const r = await api("/admin/runs/" + encodeURIComponent(id) + "/replay", { method: "POST" });
    location.hash = "#/runs/" + r.run;
  } catch (e) {
    failure(e);
  }
}

async function deadLetters() {
  const page = await api("/admin/dead-letters?limit=200");
  const all = el(
    "button",
    {
      type: "button",
      "data-testid": "replay-all",
      onclick: async () => {
        const r = await api("/admin/replay", { method: "POST", body: JSON.stringify({ all_failed: true }) });
        view(el("p", {}, `${r.replayed.length} replayed, ${r.skipped.length} skipped.`));
      },
    },
    "Replay all"
  );
  view(el("h1", {}, "Dead letters"), page.runs.length ? [all, runsTable(page.runs, true)] : el("p", {}, "No dead letters."));
}

async function deliveries() {
  const d = await api("/admin/deliveries?limit=200");
  view(
    el("h1", {}, "Deliveries"),
    el(
      "table",
      { "data-testid": "deliveries" },
      el("thead", {}, el("tr", {}, ["Received", "Connection", "Status", "Outcome", "Events"].map((h) => el("th", {}, h)))),
      el("tbody", {}, d.deliveries.map((x) => el("tr", {}, el("td", {}, when(x.received_at)), el("td", {}, x.connection), el("td", {}, x.status), el("td", {}, x.outcome), el("td", {}, x.events))))
    )
  );
}

async function recipes() {
  const s = await api("/admin/recipes");
  const rows = s.recipes.map((r) => {
    const history = el("div", { class: "history" });
    return el(
      "tr",
      { "data-recipe": r.name },
      el("td", {}, r.name),
      el("td", {}, r.trigger),
      el("td", {}, el("code", {}, r.version)),
      el("td", {}, r.file),
      el("td", {}, when(r.loaded_at)),
      el(
        "td",
        {},
        el(
          "button",
          {
            type: "button",
            onclick: async () => {
              const v = await api("/admin/recipes/" + encodeURIComponent(r.name) + "/versions");
              history.replaceChildren(el("ul", {}, v.versions.map((x) => el("li", {}, el("code", {}, x.version), ` ${x.file}, ${when(x.loaded_at)}${x.serving ? " (serving)" : ""}`))));
            },
          },
          "Versions"
        ),
        history
      ),
      el("td", {}, r.last_error ? el("pre", { class: "diagnostics" }, r.last_error.diagnostics.join("\n")) : "")
    );
  });
  const rejected = s.rejected.map((r) => el("div", { class: "rejected", "data-file": r.file }, el("h3", {}, r.file), el("pre", { class: "diagnostics" }, r.diagnostics.join("\n"))));
  view(
    el("h1", {}, "Recipes"),
    el("table", { "data-testid": "recipes" }, el("thead", {}, el("tr", {}, ["Recipe", "Trigger", "Version", "File", "Loaded", "History", "Last rejected edit"].map((h) => el("th", {}, h)))), el("tbody", {}, rows)),
    rejected.length ? [el("h2", {}, "Rejected files"), rejected] : el("p", {}, "No rejected files."),
    s.last_reload ? el("p", {}, `Last reload: ${s.last_reload.result} at ${when(s.last_reload.at)}`) : null
  );
}

async function preview() {
  const s = await api("/admin/recipes");
  const select = el("select", { id: "preview-recipe", "data-testid": "preview-recipe" }, s.recipes.map((r) => el("option", { value: r.name }, r.name)));
  const event = el("textarea", { id: "preview-event", "data-testid": "preview-event", rows: "12", spellcheck: "false", placeholder: "an event or a webhook delivery (JSON)" });
  const out = el("div", { id: "preview-out", "data-testid": "preview-out" });
  const go = el(
    "button",
    {
      type: "button",
      "data-testid": "preview-render",
      onclick: async () => {
        let ev;
        try {
          ev = JSON.parse(event.value);
        } catch (e) {
          out.replaceChildren(el("p", { class: "error" }, "The event is not JSON: " + e.message));
          return;
        }
        try {
          const p = await api("/admin/preview", { method: "POST", body: JSON.stringify({ recipe: select.value, event: ev }) });
          out.replaceChildren(
            ...p.runs.map((r, i) =>
              el(
                "section",
                { class: "preview-run" },
                el("h3", {}, `Event ${i + 1}: `, badge(r.status)),
                el(
                  "ol",
                  {},
                  r.steps.map((st) =>
                    el(
                      "li",
                      { "data-step": st.id },
                      el("strong", {}, st.id), " ", el("code", {}, st.action), " ", badge(st.status),
                      st.request
                        ? [el("p", {}, el("code", { "data-testid": "preview-line" }, `${st.request.method} ${st.request.url}`)), el("div", { "data-testid": "preview-body" }, json(st.request.body))]
                        : el("div", {}, json(st.input)),
                      st.error ? json(st.error) : null
                    )
                  )
                )
              )
            )
          );
        } catch (e) {
          out.replaceChildren(el("p", { class: "error" }, e.message));
        }
      },
    },
    "Render"
  );
  view(el("h1", {}, "Mapping preview"), el("p", {}, "The requests each step would send for this event. Nothing is sent."), el("div", { class: "filters" }, select, go), event, out);
}

// ---- routing ----

async function route() {
  if (timer) {
    clearInterval(timer);
    clearTimeout(timer);
    timer = null;
  }
  const signedIn = !!token();
  document.getElementById("login").hidden = signedIn;
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn) {
    view();
    return;
  }
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = Object.fromEntries(new URLSearchParams(query || ""));
  try {
    if (path === "/" || path === "") await overview();
    else if (path === "/runs") await runs(params);
    else if (path.startsWith("/runs/")) await run(decodeURIComponent(path.slice(6)));
    else if (path === "/dead-letters") await deadLetters();
    else if (path === "/deliveries") await deliveries();
    else if (path === "/recipes") await recipes();
    else if (path === "/preview") await preview();
    else view(el("p", {}, "No page " + path));
  } catch (e) {
    failure(e);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = document.getElementById("token").value;
    const resp = await fetch("/admin/recipes", { headers: { Authorization: "Bearer " + t } });
    if (resp.ok) {
      sessionStorage.setItem(KEY, t);
      document.getElementById("token").value = "";
      document.getElementById("login-error").textContent = "";
      route();
    } else {
      document.getElementById("login-error").textContent = "That token was refused (" + resp.status + ").";
    }
  });
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
