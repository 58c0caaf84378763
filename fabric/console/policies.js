// Injection policies: edit, preview the bundle for a subject, publish, compare versions.
import { html, useEffect, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf } from "./common.js";

/** A line diff of two texts (longest common subsequence): [{op: " " | "-" | "+", line}]. */
export function diffLines(a, b) {
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

export function Policies({ me }) {
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
