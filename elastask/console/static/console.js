// elastask console: reads /console/api/state every 2 s and draws it; the controls POST
// /console/api/action with the page's CSRF token. Text only through textContent (no HTML from data).
"use strict";

const REFRESH_MS = 2000;
const xsrf = document.querySelector('meta[name="xsrf"]').content;
let controls = false;
let lastState = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Rows are updated in place, not replaced: a row keeps its element (and a focused button its
// focus) for as long as its node, type, task or pause is on the page.
const KEYS = ["data-owner", "data-type", "data-task", "data-pause", "data-check"];

function keyOf(node) {
  if (node.nodeType !== Node.ELEMENT_NODE) return null;
  for (const k of KEYS) if (node.hasAttribute(k)) return `${node.nodeName} ${k}=${node.getAttribute(k)}`;
  return null;
}

function morph(old, fresh) {
  if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) {
    old.replaceWith(fresh);
    return fresh;
  }
  if (old.nodeType !== Node.ELEMENT_NODE) {
    if (old.nodeValue !== fresh.nodeValue) old.nodeValue = fresh.nodeValue;
    return old;
  }
  for (const a of [...old.attributes]) if (!fresh.hasAttribute(a.name)) old.removeAttribute(a.name);
  for (const a of [...fresh.attributes]) if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
  patch(old, [...fresh.childNodes]);
  return old;
}

function patch(parent, fresh) {
  const keyed = new Map();
  for (const child of parent.childNodes) {
    const k = keyOf(child);
    if (k) keyed.set(k, child);
  }
  let cursor = parent.firstChild;
  for (const next of fresh) {
    const k = keyOf(next);
    let match = null;
    if (k) {
      match = keyed.get(k) || null;
      keyed.delete(k);
    } else if (cursor && !keyOf(cursor) && cursor.nodeName === next.nodeName) {
      match = cursor;
    }
    if (match) {
      if (match !== cursor) parent.insertBefore(match, cursor);
      cursor = morph(match, next).nextSibling;
    } else {
      parent.insertBefore(next, cursor);
    }
  }
  while (cursor) {
    const gone = cursor;
    cursor = cursor.nextSibling;
    gone.remove();
  }
}

function fill(id, rows) {
  patch(document.getElementById(id), rows);
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function say(text, ok) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = "message " + (ok ? "ok" : "bad");
}

async function act(action, target) {
  try {
    const answer = await fetch("/console/api/action", {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
      body: JSON.stringify({action, target}),
    });
    let body;
    try { body = await answer.json(); } catch (e) { body = {ok: false, message: `HTTP ${answer.status}`}; }
    say(body.message || `HTTP ${answer.status}`, answer.ok && body.ok);
  } catch (e) {
    say(`the console did not answer: ${e}`, false);
  }
  refresh();
}

function button(label, action, target, id) {
  const b = el("button", {type: "button", textContent: label, "data-action": action, "data-target": target});
  if (id) b.id = id;
  b.disabled = !controls;
  b.title = controls ? `${action} ${target}` : "log in for the controls";
  return b;  // clicks: one listener on the document (rows are updated in place, see patch)
}

function bar(used, capacity) {
  const outer = el("span", {class: "bar"});
  const inner = el("span", {class: "fill"});
  const share = capacity ? Math.min(1, used / capacity) : 0;
  inner.style.width = `${Math.round(share * 100)}%`;
  if (share >= 1) inner.classList.add("full");
  outer.append(inner);
  return outer;
}

function drawHeadline(state) {
  const headline = document.getElementById("headline");
  const h = state.headline || {words: "no figures yet", level: "warn", advice: [], estimate_lines: []};
  headline.textContent = h.words;
  headline.className = `headline ${h.level}`;
  fill("advice", h.advice.map((a) => el("li", {class: "warn"}, a)));
  fill("estimate", (h.estimate_lines || []).map((line) => el("li", {}, line.trim())));
  fill("problems", (state.problems || []).map((p) => el("span", {}, p, el("br"))));
}

function drawNodes(state) {
  const rows = (state.nodes || []).map((n) => {
    const limits = Object.entries(n.groups || {}).map(([g, u]) => `${g} ${u.in_use}/${u.limit ?? "–"}`).join(", ");
    const r = n.rotation;
    let rotation = r.state;
    if (r.state !== "in") rotation += ` (after ${r.failures} failure(s)${r.out_for_s ? `, ${seconds(r.out_for_s)}` : ""})`;
    let paused = n.drained ? (n.leases ? `draining: ${n.leases} run(s) left` : "drained: empty") : (n.paused ? "paused (all)" : "no");
    const control = n.drained
      ? button("Undrain", "undrain", n.owner_id)
      : button("Drain", "drain", n.owner_id);
    return el("tr", {"data-owner": n.owner_id, class: r.state === "in" ? "" : "out"},
      el("th", {scope: "row"}, el("span", {class: "owner"}, n.owner_id), el("br"), el("small", {}, n.url)),
      el("td", {class: "in-flight"}, bar(n.in_flight_units, n.capacity_units), ` ${n.in_flight_units} / ${n.capacity_units}`),
      el("td", {class: "limits"}, limits || "–"),
      el("td", {class: "rotation"}, rotation),
      el("td", {class: "paused"}, paused),
      el("td", {class: "rpm", "data-runs": n.runs_in_window}, `${n.runs_per_minute} (${n.runs_in_window} runs)`),
      el("td", {class: "last-push"}, n.last_push_s_ago === null ? "never" : `${seconds(n.last_push_s_ago)} ago`),
      el("td", {class: "restarts"}, n.restarts_noticed),
      el("td", {class: "control"}, control));
  });
  fill("nodes-body", rows);
  const unresolved = state.unresolved_nodes || [];
  document.getElementById("unresolved").textContent = unresolved.length ? `not resolved: ${unresolved.join("; ")}` : "";
}

function drawBacklog(state) {
  const b = state.backlog;
  const summary = document.getElementById("backlog-summary");
  if (!b) { summary.textContent = "the search engine could not be read"; fill("backlog-body", []); return; }
  summary.textContent = `${b.due_now} due now, ${b.overdue} overdue (due for more than ${seconds(b.overdue_after_s)})` +
    (b.other_types_due ? `; ${b.other_types_due} more of other types` : "");
  summary.dataset.due = b.due_now;
  fill("backlog-body", b.by_type.map((row) => el("tr", {"data-type": row.task_type, class: row.overdue ? "late" : ""},
    el("th", {scope: "row"}, row.task_type),
    el("td", {class: "due"}, row.due),
    el("td", {class: "overdue"}, row.overdue),
    el("td", {class: "waiting"}, seconds(row.waiting_s)),
    el("td", {class: "oldest"}, row.oldest_id || "–"),
    el("td", {class: "control"}, button("Pause type", "pause", `type:${row.task_type}`)))));
}

function drawDrift(state) {
  const drift = state.drift;
  if (!drift) return;
  document.getElementById("drift-bucket").textContent = drift.bucket_s;
  const select = document.getElementById("drift-type");
  const chosen = select.value || "all types";
  const names = Object.keys(drift.series);
  if (!names.includes("all types")) names.unshift("all types");
  const current = Array.from(select.options).map((o) => o.value);
  if (current.join("|") !== names.join("|")) {
    select.replaceChildren(...names.map((n) => el("option", {value: n, textContent: n})));
    select.value = names.includes(chosen) ? chosen : "all types";
  }
  const points = drift.series[select.value] || [];
  const svg = document.getElementById("drift-chart");
  const ns = "http://www.w3.org/2000/svg";
  const W = 800, H = 220, pad = 34;
  const target = drift.kibana_pull_target_ms;
  const top = Math.max(target * 1.5, ...points.map((p) => p.p99_ms || 0));
  const x = (t) => pad + (W - 2 * pad) * (t - drift.from_ms) / Math.max(1, drift.to_ms - drift.from_ms);
  const y = (ms) => H - pad - (H - 2 * pad) * Math.min(ms, top) / top;
  const parts = [];
  const line = (x1, y1, x2, y2, cls) => {
    const l = document.createElementNS(ns, "line");
    Object.entries({x1, y1, x2, y2}).forEach(([k, v]) => l.setAttribute(k, v));
    l.setAttribute("class", cls);
    return l;
  };
  const text = (x0, y0, words, cls) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x0); t.setAttribute("y", y0); t.setAttribute("class", cls || "label");
    t.textContent = words;
    return t;
  };
  parts.push(line(pad, H - pad, W - pad, H - pad, "axis"), line(pad, pad, pad, H - pad, "axis"));
  parts.push(line(pad, y(target), W - pad, y(target), "target"), text(W - pad - 150, y(target) - 4, `Kibana pull ${target} ms`));
  parts.push(text(2, pad + 4, `${Math.round(top)} ms`), text(2, H - pad, "0"));
  parts.push(text(pad, H - 8, `-${document.getElementById("drift-minutes").textContent} min`), text(W - pad - 24, H - 8, "now"));
  for (const [key, cls] of [["p99_ms", "p99"], ["p50_ms", "p50"]]) {
    const poly = document.createElementNS(ns, "polyline");
    poly.setAttribute("points", points.filter((p) => p[key] !== null).map((p) => `${x(p.t + drift.bucket_s * 500).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "));
    poly.setAttribute("class", cls);
    parts.push(poly);
  }
  for (const [key, cls] of [["p99_ms", "p99"], ["p50_ms", "p50"]]) {
    for (const p of points.filter((q) => q[key] !== null)) {
      const dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", x(p.t + drift.bucket_s * 500).toFixed(1));
      dot.setAttribute("cy", y(p[key]).toFixed(1));
      dot.setAttribute("r", "2.5");
      dot.setAttribute("class", `${cls} dot`);
      parts.push(dot);
    }
  }
  parts.push(text(W - pad - 150, pad, "p99", "p99-label"), text(W - pad - 110, pad, "p50", "p50-label"));
  svg.replaceChildren(...parts);
  const last = points[points.length - 1];
  document.getElementById("drift-latest").textContent = last
    ? `${select.value}, latest ${drift.bucket_s} s: p50 ${last.p50_ms} ms, p99 ${last.p99_ms} ms over ${last.n} start(s)`
    : `${select.value}: no start in the last minutes`;
}

function drawPauses(state) {
  const p = state.pauses || {paused: []};
  const rows = p.paused.map((pause) => el("li", {"data-pause": pause.pause},
    el("strong", {}, pause.pause), ` from ${pause.source}`, pause.since ? ` since ${pause.since} (${seconds(pause.seconds)})` : "",
    " ", pause.source === "elastask.yaml" ? el("small", {}, "(stays until elastask.yaml changes)") : button("Resume", "resume", pause.pause)));
  if (p.kibana_execution_pause && p.kibana_execution_pause.paused) {
    rows.push(el("li", {}, el("strong", {}, "Kibana's execution pause"), ` ${JSON.stringify(p.kibana_execution_pause)}`));
  }
  fill("pauses", rows.length ? rows : [el("li", {}, "nothing paused")]);
}

function drawFailed(state) {
  const failed = state.failed || {latest: []};
  document.getElementById("failed-summary").textContent = `${failed.total ?? "?"} task(s) failed in the index; the latest elastask failed:`;
  fill("failed-body", failed.latest.map((f) => el("tr", {"data-task": f.id},
    el("th", {scope: "row"}, f.id), el("td", {}, f.task_type || "–"), el("td", {}, f.at || "–"),
    el("td", {class: "reason"}, f.reason || "–"), el("td", {class: "control"}, button("Requeue", "requeue", f.id)))));
}

function drawRest(state) {
  const deps = state.dependencies;
  fill("dependencies", deps ? deps.map((d) => el("li", {class: d.ok ? (d.warning ? "warn" : "ok") : "bad", "data-check": d.name},
    el("strong", {}, d.ok ? (d.warning ? "WARNING " : "ok ") : "PROBLEM "), `${d.name}: ${d.detail}`, d.fix && !d.ok ? ` — fix: ${d.fix}` : "")) : [el("li", {}, "checking…")]);
  fill("actions", (state.actions || []).map((a) => el("li", {class: a.ok ? "" : "bad"},
    `${a.at} ${a.who} (${a.from}): ${a.action} ${a.target} — ${a.message}`)));
  document.getElementById("updated").textContent = state.at;
}

function draw(state) {
  lastState = state;
  controls = Boolean(state.controls);
  document.body.classList.toggle("controls-on", controls);
  for (const b of document.querySelectorAll("#pause-form button")) b.disabled = !controls;
  document.getElementById("pause-target").disabled = !controls;
  drawHeadline(state);
  drawNodes(state);
  drawBacklog(state);
  drawDrift(state);
  drawPauses(state);
  drawFailed(state);
  drawRest(state);
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const answer = await fetch("/console/api/state", {credentials: "same-origin", cache: "no-store"});
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    draw(await answer.json());
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    const headline = document.getElementById("headline");
    headline.textContent = `elastask serve did not answer: ${e.message}`;
    headline.className = "headline error";
  } finally {
    refreshing = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelector("#nodes tbody").id = "nodes-body";
  document.querySelector("#backlog tbody").id = "backlog-body";
  document.querySelector("#failed tbody").id = "failed-body";
  const form = document.getElementById("pause-form");
  const target = document.getElementById("pause-target");
  form.addEventListener("submit", (event) => { event.preventDefault(); act("pause", target.value || "all"); });
  document.getElementById("resume-button").addEventListener("click", () => act("resume", target.value || "all"));
  document.addEventListener("click", (event) => {
    const b = event.target.closest("button[data-action][data-target]");
    if (b && !b.disabled) act(b.dataset.action, b.dataset.target);
  });
  document.getElementById("drift-type").addEventListener("change", () => lastState && drawDrift(lastState));
  refresh();
  setInterval(refresh, REFRESH_MS);
});
