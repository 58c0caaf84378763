// The Context Fabric console: one page, Preact with htm templates, no build step.
// Every view reads the same /v1 endpoints a copilot calls, with the signed-in bearer
// token, so it shows exactly what the token's tenant and scopes allow.
import { html, render, useEffect, useState } from "./vendor/htm-preact.module.js";

const TOKEN_KEY = "fabric.console.token";

/** Call the router with the token; resolves to {ok, status, body} and never throws on HTTP errors. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  try {
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { error: text }; }
    return { ok: r.ok, status: r.status, body: parsed };
  } catch (e) {
    return { ok: false, status: 0, body: { error: `the router did not answer: ${e.message}` } };
  }
}

function errorOf(res) {
  return res.ok ? "" : `${res.status || "network"}: ${(res.body && res.body.error) || "request failed"}`;
}

/** Poll `load` every `ms` while the view is shown; `load(wanted)` keeps an answer only while
 * `wanted()` (the view and its inputs did not change while the request was out). */
function usePoll(load, ms, deps) {
  useEffect(() => {
    let alive = true;
    const wanted = () => alive;
    const tick = async () => { if (alive) await load(wanted); };
    tick();
    const id = setInterval(tick, ms);
    return () => { alive = false; clearInterval(id); };
  }, deps);
}

function SignIn({ onSignedIn }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  async function submit(e) {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    const res = await api("/v1/console/me");
    if (res.ok) onSignedIn(res.body);
    else { sessionStorage.removeItem(TOKEN_KEY); setError(errorOf(res)); }
  }
  return html`<section aria-labelledby="signin-title">
    <h2 id="signin-title">Sign in</h2>
    <p class="muted">Paste a token (<code>fabric token --tenant T --scope ...</code>).</p>
    <form onSubmit=${submit}>
      <label for="token">Bearer token</label>
      <input id="token" name="token" size="80" autocomplete="off" value=${token}
             onInput=${(e) => setToken(e.target.value)} required />
      <p><button class="primary" type="submit">Sign in</button></p>
      ${error && html`<p role="alert" class="error" id="signin-error">${error}</p>`}
    </form>
  </section>`;
}

function Contexts({ me }) {
  const [type, setType] = useState(me.context_types[0] || "");
  const [list, setList] = useState({ items: [] });
  const [open, setOpen] = useState(null);
  const [error, setError] = useState("");
  usePoll(async (wanted) => {
    if (!type) return;
    const res = await api(`/v1/contexts/${encodeURIComponent(type)}?limit=50`);
    if (!wanted()) return;
    setError(errorOf(res));
    if (res.ok) setList(res.body);
  }, 2000, [type]);
  async function show(subject) {
    const res = await api(`/v1/contexts/${encodeURIComponent(type)}/${encodeURIComponent(subject)}`);
    setError(errorOf(res));
    setOpen(res.ok ? res.body : null);
  }
  return html`<section aria-labelledby="contexts-title">
    <h2 id="contexts-title">Contexts</h2>
    <label for="ctx-type">Context type</label>
    <select id="ctx-type" value=${type} onChange=${(e) => { setType(e.target.value); setOpen(null); }}>
      ${me.context_types.map((t) => html`<option value=${t}>${t}</option>`)}
    </select>
    ${error && html`<p role="alert" class="error">${error}</p>`}
    <div class="columns">
      <table aria-label="Recent contexts">
        <thead><tr><th>Subject</th><th>As of</th><th>Sensitivity</th></tr></thead>
        <tbody>${list.items.map((c) => html`<tr>
          <td><a href="#" data-subject=${c.subject} onClick=${(e) => { e.preventDefault(); show(c.subject); }}>${c.subject}</a></td>
          <td>${c.as_of}${c.stale ? " (stale)" : ""}</td><td>${c.sensitivity}</td></tr>`)}
        </tbody>
      </table>
      ${open && html`<div id="context-detail" aria-live="polite">
        <h3>${open.context_type} / ${open.subject}</h3>
        <p>Sequence ${open.sequence}, ${open.changes} changes; as of ${open.as_of} (${open.age_ms} ms old${open.stale ? ", stale" : ""});
           sensitivity <strong>${open.sensitivity}</strong>; from <code>${open.event.source}</code>, event <code>${open.event.id}</code> (${open.event.type}).</p>
        <pre>${JSON.stringify(open.event.data, null, 2)}</pre>
      </div>`}
    </div>
  </section>`;
}

function Composites() {
  const [items, setItems] = useState([]);
  const [error, setError] = useState("");
  usePoll(async (wanted) => {
    const res = await api("/v1/composites?limit=20");
    if (!wanted()) return;
    setError(errorOf(res));
    if (res.ok) setItems(res.body.items || []);
  }, 2000, []);
  return html`<section aria-labelledby="composites-title">
    <h2 id="composites-title">Composites</h2>
    ${error && html`<p role="alert" class="error">${error}</p>`}
    <table aria-label="Composite feed">
      <thead><tr><th>Type</th><th>Subject</th><th>As of</th><th>Contributing events</th></tr></thead>
      <tbody>${items.map((c) => html`<tr class="composite">
        <td>${c.event.type}</td><td>${c.subject}</td><td>${c.as_of}</td>
        <td>${((c.event.data && c.event.data.events) || []).map((ev) =>
          html`<div><code>${ev.id}</code> <span class="muted">${ev.topic}@${ev.offset}, ${ev.time}</span></div>`)}</td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}

/** A line diff of two texts (longest common subsequence): [{op: " " | "-" | "+", line}]. */
function diffLines(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const lcs = Array.from({ length: x.length + 1 }, () => new Array(y.length + 1).fill(0));
  for (let i = x.length - 1; i >= 0; i--)
    for (let j = y.length - 1; j >= 0; j--)
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < x.length || j < y.length) {
    if (i < x.length && j < y.length && x[i] === y[j]) { out.push({ op: " ", line: x[i] }); i++; j++; }
    else if (j < y.length && (i >= x.length || lcs[i][j + 1] >= lcs[i + 1][j])) out.push({ op: "+", line: y[j++] });
    else out.push({ op: "-", line: x[i++] });
  }
  return out;
}

function PolicyDiff({ name, versions }) {
  const [a, setA] = useState(versions[0]);
  const [b, setB] = useState(versions[versions.length - 1]);
  const [lines, setLines] = useState(null);
  const [error, setError] = useState("");
  async function compare() {
    const [ra, rb] = await Promise.all([a, b].map((v) => api(`/v1/policies/${encodeURIComponent(`${name}@${v}`)}`)));
    setError(errorOf(ra) || errorOf(rb));
    const text = (r) => JSON.stringify({ ...r.body, version: undefined }, null, 2);
    setLines(ra.ok && rb.ok ? diffLines(text(ra), text(rb)) : null);
  }
  const pick = (id, label, value, set) => html`<div><label for=${id}>${label}</label>
    <select id=${id} value=${value} onChange=${(e) => set(Number(e.target.value))}>
      ${versions.map((v) => html`<option value=${v}>version ${v}</option>`)}</select></div>`;
  return html`<div aria-labelledby="diff-title"><h3 id="diff-title">Compare versions</h3>
    <div class="row">${pick("diff-a", "From", a, setA)}${pick("diff-b", "To", b, setB)}
      <button class="primary" type="button" onClick=${compare}>Compare</button></div>
    ${error && html`<p role="alert" class="error">${error}</p>`}
    ${lines && html`<pre id="policy-diff">${lines.filter((l) => l.op !== " ").length === 0 ? "no difference" :
      lines.map((l) => html`<div class=${l.op === "+" ? "added" : l.op === "-" ? "removed" : ""}>${l.op} ${l.line}</div>`)}</pre>`}
  </div>`;
}

function Policies({ me }) {
  const [names, setNames] = useState([]);
  const [versions, setVersions] = useState({});
  const [name, setName] = useState("");
  const [text, setText] = useState("");
  const [subject, setSubject] = useState("");
  const [preview, setPreview] = useState(null);
  const [message, setMessage] = useState({ error: "", ok: "" });
  const admin = me.scopes.includes("admin");
  useEffect(() => {
    api("/v1/policies").then((res) => {
      if (!res.ok) return setMessage({ error: errorOf(res), ok: "" });
      const found = (res.body.policies || []).map((p) => p.name);
      setNames(found);
      setVersions(Object.fromEntries((res.body.policies || []).map((p) => [p.name, p.versions])));
      if (found.length) load(found[0]);
    });
  }, []);
  async function load(n) {
    setName(n);
    const res = await api(`/v1/policies/${encodeURIComponent(n)}`);
    if (res.ok) setText(JSON.stringify(res.body, null, 2));
    setMessage({ error: errorOf(res), ok: "" });
  }
  function parsed() {
    try { return JSON.parse(text); } catch (e) { setMessage({ error: `the policy is not JSON: ${e.message}`, ok: "" }); return null; }
  }
  async function runPreview() {
    const policy = parsed();
    if (!policy) return;
    const res = await api("/v1/assemble", { method: "POST", body: { subject, inline: policy } });
    setMessage({ error: errorOf(res), ok: "" });
    setPreview(res.ok ? res.body : null);
  }
  async function publish() {
    const policy = parsed();
    if (!policy) return;
    const res = await api(`/v1/policies/${encodeURIComponent(name)}`, { method: "PUT", body: policy });
    setMessage(res.ok ? { error: "", ok: `published ${name} version ${res.body.version ?? ""}` } : { error: errorOf(res), ok: "" });
    if (res.ok) {
      const known = new Set([...(versions[name] || []), res.body.version]);
      setVersions({ ...versions, [name]: [...known].sort((x, y) => x - y) });
    }
  }
  return html`<section aria-labelledby="policies-title">
    <h2 id="policies-title">Injection policies</h2>
    <div class="row">
      <div><label for="policy-name">Policy</label>
        <select id="policy-name" value=${name} onChange=${(e) => load(e.target.value)}>
          ${names.map((n) => html`<option value=${n}>${n}</option>`)}
        </select></div>
      <div><label for="preview-subject">Subject to preview</label>
        <input id="preview-subject" value=${subject} onInput=${(e) => setSubject(e.target.value)} /></div>
      <button class="primary" type="button" onClick=${runPreview} disabled=${!admin}
              title=${admin ? "" : "previewing an edited policy needs the admin scope"}>Preview</button>
      <button class="primary" type="button" id="publish" onClick=${publish}>Publish as a new version</button>
    </div>
    ${!admin && html`<p class="muted">This token has no <code>admin</code> scope: it can read policies, not change them.</p>`}
    ${message.error && html`<p role="alert" class="error" id="policy-error">${message.error}</p>`}
    ${message.ok && html`<p role="status" class="ok" id="policy-ok">${message.ok}</p>`}
    <div class="columns">
      <div><label for="policy-text">Policy (JSON: sections in order, conditions, top_k, budget_tokens, include_stale, min_quality)</label>
        <textarea id="policy-text" spellcheck=${false} value=${text} onInput=${(e) => setText(e.target.value)}></textarea></div>
      <div id="preview" aria-live="polite">${preview && html`
        <p><strong>${preview.used_tokens}</strong> of ${preview.budget_tokens} tokens used</p>
        <table aria-label="Bundle sections">
          <thead><tr><th>Section</th><th>Items</th><th>Tokens</th><th>Omitted</th></tr></thead>
          <tbody>${preview.sections.map((s) => html`<tr class="section">
            <td>${s.context_type}</td><td>${s.items.map((i) => i.subject).join(", ")}</td>
            <td>${s.items.reduce((n, i) => n + i.tokens, 0)}</td>
            <td>${Object.entries(s.omitted).filter(([, n]) => n).map(([why, n]) => `${n} ${why}`).join(", ") || "none"}</td>
          </tr>`)}</tbody>
        </table>`}
      </div>
    </div>
    ${name && (versions[name] || []).length > 1 && html`<${PolicyDiff} key=${`${name}:${versions[name].length}`}
        name=${name} versions=${versions[name]} />`}
  </section>`;
}

function Audit() {
  const [action, setAction] = useState("");
  const [decision, setDecision] = useState("");
  const [records, setRecords] = useState([]);
  const [error, setError] = useState("");
  usePoll(async (wanted) => {
    const q = new URLSearchParams({ since: "1d", limit: "100" });
    if (action) q.set("action", action);
    if (decision) q.set("decision", decision);
    const res = await api(`/v1/audit?${q}`);
    if (!wanted()) return;
    setError(errorOf(res));
    if (res.ok) setRecords(res.body.records || []);
  }, 3000, [action, decision]);
  return html`<section aria-labelledby="audit-title">
    <h2 id="audit-title">Audit</h2>
    <div class="row">
      <div><label for="audit-action">Action</label>
        <input id="audit-action" placeholder="context.read" value=${action} onChange=${(e) => setAction(e.target.value)} /></div>
      <div><label for="audit-decision">Decision</label>
        <select id="audit-decision" value=${decision} onChange=${(e) => setDecision(e.target.value)}>
          <option value="">any</option><option value="allow">allow</option><option value="deny">deny</option>
        </select></div>
    </div>
    ${error && html`<p role="alert" class="error">${error}</p>`}
    <table aria-label="Audit records">
      <thead><tr><th>Time</th><th>Who</th><th>Action</th><th>Resource</th><th>Decision</th><th>Reason</th></tr></thead>
      <tbody>${records.map((r) => html`<tr><td>${r.time}</td><td>${r.subject}</td><td>${r.action}</td>
        <td>${r.resource}</td><td>${r.decision}</td><td>${r.reason}</td></tr>`)}</tbody>
    </table>
  </section>`;
}

/** The line of `text` where the last key of a field path (`sequence.steps[1].where`) is written. */
function lineOf(text, field) {
  const key = (field || "").split(".").pop().replace(/\[\d+\]$/, "");
  if (!key) return 0;
  const written = new RegExp(`(^\\s*(- )?|[{,]\\s*)${key}:`); // a block key, or a key inside {...}
  const at = text.split("\n").findIndex((l) => written.test(l));
  return at + 1;
}

const EXAMPLE = `patterns:
  - name: checkout-errors
    description: Twenty errors of one service within a minute.
    key: data.service
    aggregate:
      where: {type: log.entry, data.level: ERROR}
      fn: count
      window: {kind: sliding, size: 1m}
      when: {$gte: 20}
`;

function Patterns({ me }) {
  const [patterns, setPatterns] = useState([]);
  const [text, setText] = useState(EXAMPLE);
  const [message, setMessage] = useState({ error: "", field: "", ok: "" });
  const load = async () => {
    const res = await api("/v1/patterns");
    if (res.ok) setPatterns(res.body.patterns);
    else setMessage({ error: errorOf(res), field: "", ok: "" });
  };
  useEffect(() => { load(); }, []);
  async function apply() {
    const res = await api("/v1/patterns", { method: "POST", body: { yaml: text } });
    if (res.ok) { setMessage({ error: "", field: "", ok: `applied ${res.body.applied.join(", ")}` }); load(); }
    else setMessage({ error: (res.body && res.body.problem) || errorOf(res), field: (res.body && res.body.field) || "", ok: "" });
  }
  async function remove(name) {
    const res = await api(`/v1/patterns/${encodeURIComponent(name)}`, { method: "DELETE" });
    setMessage(res.ok ? { error: "", field: "", ok: `removed ${name}` } : { error: errorOf(res), field: "", ok: "" });
    load();
  }
  const line = message.field ? lineOf(text, message.field) : 0;
  return html`<section aria-labelledby="patterns-title">
    <h2 id="patterns-title">Patterns</h2>
    <table aria-label="Patterns">
      <thead><tr><th>Name</th><th>Kind</th><th>Version</th><th>Owner</th><th></th></tr></thead>
      <tbody>${patterns.map((p) => html`<tr class="pattern"><td>${p.name}</td><td>${p.kind}</td><td>${p.version}</td>
        <td>${p.owner}</td><td>${p.owner === "tenant" && html`<button type="button"
          aria-label=${`Remove ${p.name}`} onClick=${() => remove(p.name)}>Remove</button>`}</td></tr>`)}</tbody>
    </table>
    <label for="pattern-text">Apply patterns (YAML)</label>
    <textarea id="pattern-text" spellcheck=${false} value=${text} aria-invalid=${message.error ? "true" : "false"}
              aria-describedby="pattern-error" onInput=${(e) => setText(e.target.value)}></textarea>
    <div id="pattern-error" role=${message.error ? "alert" : undefined}>${message.error && html`<p class="error">
      ${message.field && html`at <code id="pattern-error-field">${message.field}</code>${line ? ` (line ${line})` : ""}: `}${message.error}</p>`}</div>
    ${message.ok && html`<p role="status" class="ok" id="pattern-ok">${message.ok}</p>`}
    <p><button class="primary" type="button" onClick=${apply}
        disabled=${!(me.scopes.includes("admin") || me.scopes.includes("registry:write"))}>Apply</button></p>
  </section>`;
}

/** ClickHouse times as the store answers them ("2026-12-05 22:35:30.121000+00:00") -> ms. */
const msOf = (t) => (t && t !== "None" ? Date.parse(String(t).replace(" ", "T")) : NaN);

function Timeline({ run, steps }) {
  const start = msOf(run.started);
  const end = Math.max(start + 1, ...steps.map((s) => msOf(s.ended)).filter((t) => !Number.isNaN(t)));
  const pct = (t) => `${(100 * (t - start)) / (end - start)}%`;
  return html`<table aria-label="Step timeline" id="timeline">
    <thead><tr><th>Phase</th><th>Step</th><th>System</th><th>Attempt</th><th>Outcome</th><th>ms</th>
      <th class="bar-col">${end - start} ms in all</th></tr></thead>
    <tbody>${steps.map((s) => html`<tr class="step">
      <td>${s.phase}</td><td>${s.step}</td><td>${s.system}</td><td>${s.attempt}</td>
      <td class=${s.outcome === "succeeded" ? "ok" : s.outcome === "failed" ? "error" : ""}>${s.outcome}</td>
      <td>${s.duration_ms}</td>
      <td class="bar-col"><div class="bar" title=${s.error || ""}
        style=${{ marginLeft: pct(msOf(s.started)), width: `max(2px, calc(${pct(msOf(s.ended))} - ${pct(msOf(s.started))}))` }}></div></td>
    </tr>`)}</tbody>
  </table>`;
}

function Workflows({ me }) {
  const [runs, setRuns] = useState([]);
  const [open, setOpen] = useState(null);
  const [error, setError] = useState("");
  usePoll(async (wanted) => {
    const res = await api("/v1/workflows/runs?since=1d&limit=50");
    if (!wanted()) return;
    setError(errorOf(res));
    if (res.ok) setRuns(res.body.runs);
  }, 3000, []);
  async function show(id) {
    const res = await api(`/v1/workflows/runs/${encodeURIComponent(id)}`);
    setError(errorOf(res));
    setOpen(res.ok ? res.body : null);
  }
  return html`<section aria-labelledby="workflows-title">
    <h2 id="workflows-title">Workflow runs</h2>
    ${!me.scopes.includes("workflows:read") && !me.scopes.includes("admin") &&
      html`<p class="muted">This token has no <code>workflows:read</code> scope.</p>`}
    ${error && html`<p role="alert" class="error">${error}</p>`}
    <table aria-label="Workflow runs">
      <thead><tr><th>Run</th><th>Workflow</th><th>Status</th><th>Trigger</th><th>Started</th><th>Reason</th></tr></thead>
      <tbody>${runs.map((r) => html`<tr class="run">
        <td><a href="#" data-run=${r.run_id} onClick=${(e) => { e.preventDefault(); show(r.run_id); }}>${r.run_id}</a></td>
        <td>${r.workflow} v${r.version}</td><td>${r.status}</td><td>${r.trigger_type}</td><td>${r.started}</td><td>${r.reason}</td>
      </tr>`)}</tbody>
    </table>
    ${open && html`<h3>${open.run.workflow} v${open.run.version}: ${open.run.status}</h3>
      <${Timeline} run=${open.run} steps=${open.steps} />`}
  </section>`;
}

/** Read a server-sent event stream with the bearer token (EventSource cannot send one);
 * calls `onData` with each `data:` payload until `signal` aborts. */
async function stream(path, onData, signal) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  const r = await fetch(path, { headers, signal });
  if (!r.ok) throw new Error(`${r.status}: ${((await r.json().catch(() => ({}))).error) || "refused"}`);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data && !frame.startsWith("event: end")) onData(JSON.parse(data));
    }
  }
}

function Sparkline({ values, label }) {
  const max = Math.max(1, ...values);
  const w = 120, h = 24, step = w / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(h - (v / max) * (h - 2) - 1).toFixed(1)}`).join(" ");
  return html`<svg class="spark" width=${w} height=${h} viewBox=${`0 0 ${w} ${h}`} role="img" aria-label=${label}>
    <polyline points=${points} fill="none" stroke="currentColor" stroke-width="1.5" /></svg>`;
}

function Flow() {
  const [snap, setSnap] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    const abort = new AbortController();
    stream("/v1/console/flow", (s) => { setSnap(s); setError(s.error || ""); }, abort.signal)
      .catch((e) => { if (!abort.signal.aborted) setError(e.message); });
    return () => abort.abort();
  }, []);
  const byType = {};
  for (const r of (snap && snap.rates) || []) byType[r.type] = (byType[r.type] || 0) + r.count;
  return html`<section aria-labelledby="flow-title">
    <h2 id="flow-title">Live flow <span class="muted">(last ${snap ? snap.window_s : 60} s, updated every 2 s)</span></h2>
    ${error && html`<p role="alert" class="error" id="flow-error">${error}</p>`}
    ${snap && html`<div class="columns">
      <div>
        <h3>Events by type</h3>
        <table aria-label="Events by type" id="flow-types">
          <thead><tr><th>Type</th><th>Events/s</th><th>Trend (per ${snap.bucket_s} s)</th></tr></thead>
          <tbody>${Object.entries(byType).map(([t, n]) => html`<tr class="flow-type"><td>${t}</td>
            <td>${(n / snap.window_s).toFixed(2)}</td>
            <td><${Sparkline} values=${snap.sparklines[t] || []} label=${`${t} events over the last minute`} /></td></tr>`)}</tbody>
        </table>
        <h3>By source</h3>
        <table aria-label="Events by type and source">
          <thead><tr><th>Type</th><th>Source</th><th>Events/s</th></tr></thead>
          <tbody>${snap.rates.map((r) => html`<tr><td>${r.type}</td><td>${r.source}</td><td>${r.per_s}</td></tr>`)}</tbody>
        </table>
      </div>
      <div>
        <h3>Dead letters</h3>
        <p id="flow-dlq">${snap.dlq.count} in the last minute (${snap.dlq.per_s}/s)</p>
        <ul>${snap.dlq.latest.map((d) => html`<li><span class="muted">${d.at}</span> ${d.reason}</li>`)}</ul>
        <h3>Freshness</h3>
        <table aria-label="Freshness by context type">
          <thead><tr><th>Context type</th><th>Newest</th><th>Age</th><th>Watermark lag</th></tr></thead>
          <tbody>${snap.freshness.map((f) => html`<tr><td>${f.context_type}</td><td>${f.subject}</td>
            <td class=${f.stale ? "error" : ""}>${(f.age_ms / 1000).toFixed(1)} s${f.stale ? " (stale)" : ""}</td>
            <td>${f.watermark_lag_ms} ms</td></tr>`)}</tbody>
        </table>
        <p>Open subscriptions on this router: <strong id="flow-subs">${snap.subscriptions}</strong></p>
      </div>
    </div>`}
  </section>`;
}

const VIEWS = { flow: Flow, contexts: Contexts, composites: Composites, policies: Policies, patterns: Patterns,
                workflows: Workflows, audit: Audit };

function Console() {
  const [me, setMe] = useState(null);
  const [view, setView] = useState("contexts");  // the live flow needs audit:read; contexts is for everyone
  useEffect(() => {
    if (sessionStorage.getItem(TOKEN_KEY)) api("/v1/console/me").then((res) => res.ok && setMe(res.body));
  }, []);
  const signOut = () => { sessionStorage.removeItem(TOKEN_KEY); setMe(null); };
  const View = VIEWS[view];
  return html`<header><h1>Context Fabric</h1>
      ${me && html`<span class="who">tenant <strong id="tenant">${me.tenant}</strong>
        <button type="button" onClick=${signOut}>Sign out</button></span>`}</header>
    ${me ? html`<nav aria-label="Views">${Object.keys(VIEWS).map((v) => html`<button type="button"
          aria-current=${v === view ? "page" : undefined} onClick=${() => setView(v)}>${v[0].toUpperCase() + v.slice(1)}</button>`)}</nav>
        <${View} me=${me} />`
      : html`<${SignIn} onSignedIn=${setMe} />`}`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "Loading" line
render(html`<${Console} />`, root);
