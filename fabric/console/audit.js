// Audit: the tenant's decisions, filtered by action and decision.
import { html, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf, usePoll } from "./common.js";

export function Audit() {
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
