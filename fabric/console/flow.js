// The live flow: events per second by type and source, dead letters, freshness, subscriptions.
import { html, useEffect, useState } from "./vendor/htm-preact.module.js";
import { Sparkline, stream } from "./common.js";

export function Flow() {
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
