// Contexts: the newest subjects of a type; one opens with its freshness, sensitivity and
// provenance, its version history (from ClickHouse), and for stream types a chart of the window.
import { html, useEffect, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf, usePoll } from "./common.js";

const path = (type, subject) => `${encodeURIComponent(type)}/${subject.split("/").map(encodeURIComponent).join("/")}`;

/** The numbers a stream window can be drawn as: a metric's values, else entries per level. */
function seriesOf(window) {
  const entries = [...window].reverse(); // oldest first
  const values = entries.map((e) => e.data && e.data.value).filter((v) => typeof v === "number");
  if (values.length === entries.length && values.length) return { kind: "values", values, entries };
  const levels = {};
  for (const e of entries) { const l = (e.data && e.data.level) || e.type; levels[l] = (levels[l] || 0) + 1; }
  return { kind: "levels", levels, entries };
}

/** A small chart of a stream type's window: a line of a metric's values, or bars of entries by level. */
function WindowChart({ window }) {
  const s = seriesOf(window);
  const w = 360, h = 90;
  if (s.kind === "values") {
    const lo = Math.min(...s.values), hi = Math.max(...s.values), span = hi - lo || 1;
    const x = (i) => (s.values.length > 1 ? (i * (w - 8)) / (s.values.length - 1) + 4 : w / 2);
    const y = (v) => h - 6 - ((v - lo) / span) * (h - 12);
    const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    return html`<figure id="window-chart"><svg width=${w} height=${h} viewBox=${`0 0 ${w} ${h}`} role="img"
        aria-label=${`${s.values.length} values in the window, from ${lo} to ${hi}`}>
        <polyline points=${points} fill="none" stroke="currentColor" stroke-width="2" />
        ${s.values.map((v, i) => html`<circle cx=${x(i)} cy=${y(v)} r="2.5" fill="currentColor"><title>${v}</title></circle>`)}
      </svg><figcaption class="muted">${s.values.length} values in the window: min ${lo}, max ${hi}, last ${s.values[s.values.length - 1]}</figcaption></figure>`;
  }
  const rows = Object.entries(s.levels);
  const max = Math.max(1, ...rows.map(([, n]) => n));
  return html`<figure id="window-chart"><svg width=${w} height=${rows.length * 22 + 4} role="img"
      aria-label=${`entries in the window by level: ${rows.map(([l, n]) => `${l} ${n}`).join(", ")}`}>
      ${rows.map(([l, n], i) => html`<g><text x="0" y=${i * 22 + 15} font-size="12" fill="currentColor">${l}</text>
        <rect x="90" y=${i * 22 + 4} height="14" width=${((w - 130) * n) / max} fill="currentColor" />
        <text x=${96 + ((w - 130) * n) / max} y=${i * 22 + 15} font-size="12" fill="currentColor">${n}</text></g>`)}
    </svg><figcaption class="muted">${s.entries.length} entries in the window</figcaption></figure>`;
}

function History({ versions }) {
  if (!versions) return html`<p class="muted" id="history-loading">Loading the history…</p>`;
  if (!versions.length) return html`<p class="muted">No versions in the trail yet (the sink writes them within seconds).</p>`;
  return html`<table aria-label="Version history" id="context-history">
    <thead><tr><th>Sequence</th><th>Time</th><th>Type</th><th>Source</th><th>Sensitivity</th><th>Data</th></tr></thead>
    <tbody>${versions.map((v) => html`<tr class="version"><td>${v.sequence}</td><td>${v.time}</td><td>${v.type}</td>
      <td><code>${v.source}</code>${v.provider ? html` <span class="muted">(${v.provider})</span>` : ""}</td>
      <td>${v.sensitivity}</td><td><code class="clip">${JSON.stringify(v.data)}</code></td></tr>`)}</tbody>
  </table>`;
}

export function Contexts({ me, focus }) {
  const [type, setType] = useState((focus && focus.type) || me.context_types[0] || "");
  const [wanted, setWanted] = useState("");
  const [list, setList] = useState({ items: [] });
  const [open, setOpen] = useState(null);
  const [history, setHistory] = useState(null);
  const [error, setError] = useState("");
  usePoll(async (wanted) => {
    if (!type) return;
    const res = await api(`/v1/contexts/${encodeURIComponent(type)}?limit=50`);
    if (!wanted()) return;
    setError(errorOf(res));
    if (res.ok) setList(res.body);
  }, 2000, [type]);
  async function show(subject, t = type) {
    setHistory(null);
    const [res, hist] = await Promise.all([api(`/v1/contexts/${path(t, subject)}`),
                                           api(`/v1/history/${path(t, subject)}?limit=20`)]);
    setError(errorOf(res) || errorOf(hist));
    setOpen(res.ok ? res.body : null);
    setHistory(hist.ok ? hist.body.versions : []);
  }
  useEffect(() => { if (focus) { setType(focus.type); show(focus.subject, focus.type); } }, [focus && focus.at]);
  return html`<section aria-labelledby="contexts-title">
    <h2 id="contexts-title">Contexts</h2>
    <div class="row">
      <div><label for="ctx-type">Context type</label>
        <select id="ctx-type" value=${type} onChange=${(e) => { setType(e.target.value); setOpen(null); }}>
          ${me.context_types.map((t) => html`<option value=${t}>${t}</option>`)}
        </select></div>
      <form class="row" onSubmit=${(e) => { e.preventDefault(); if (wanted.trim()) show(wanted.trim()); }}>
        <div><label for="ctx-subject">Subject</label>
          <input id="ctx-subject" value=${wanted} placeholder="orders-list" onInput=${(e) => setWanted(e.target.value)} /></div>
        <button class="primary" type="submit">Open</button>
      </form>
    </div>
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
        ${open.window && open.window.length > 0 && html`<h4>Window</h4><${WindowChart} window=${open.window} />`}
        <pre>${JSON.stringify(open.event.data, null, 2)}</pre>
      </div>`}
    </div>
    ${open && html`<h3>History of ${open.subject}</h3><${History} versions=${history} />`}
  </section>`;
}
