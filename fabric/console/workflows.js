// Workflows: the tenant's workflows (apply YAML, remove) and their runs with a step timeline.
import { html, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf, msOf, usePoll } from "./common.js";
import { canWrite, useYamlObjects, YamlEditor } from "./yamlobjects.js";

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

const EXAMPLE = `name: slo-incident
version: 1
triggers:
  - event: composite.latency-slo-breach
phases:
  - id: open
    type: sequential
    steps:
      - id: ticket
        system: desk
        http: {path: /incidents, body: {service: "{{ trigger.subject }}"}}
        retry: {max_attempts: 3, backoff: 200ms}
monitoring:
  sla_targets: [{phase: open, max_duration: 5s}]
`;

function Definitions({ me }) {
  const objects = useYamlObjects("/v1/workflows", "workflows", EXAMPLE);
  return html`<h3>Workflows</h3>
    <table aria-label="Workflows">
      <thead><tr><th>Name</th><th>Version</th><th>Triggers</th><th>Phases</th><th></th></tr></thead>
      <tbody>${objects.items.map((w) => html`<tr class="workflow"><td>${w.name}</td><td>${w.version}${w.enabled ? "" : " (disabled)"}</td>
        <td>${w.triggers.join(", ")}</td><td>${w.phases.join(" → ")}</td>
        <td>${canWrite(me) && html`<button type="button" aria-label=${`Remove ${w.name}`}
          onClick=${() => objects.remove(w.name)}>Remove</button>`}</td></tr>`)}</tbody>
    </table>
    <${YamlEditor} id="workflow" label="Apply workflows (YAML)" objects=${objects} canWrite=${canWrite(me)} />`;
}

function Runs() {
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
  return html`<h3>Runs</h3>
    ${error && html`<p role="alert" class="error">${error}</p>`}
    <table aria-label="Workflow runs">
      <thead><tr><th>Run</th><th>Workflow</th><th>Status</th><th>Trigger</th><th>Started</th><th>Reason</th></tr></thead>
      <tbody>${runs.map((r) => html`<tr class="run">
        <td><a href="#" data-run=${r.run_id} onClick=${(e) => { e.preventDefault(); show(r.run_id); }}>${r.run_id}</a></td>
        <td>${r.workflow} v${r.version}</td><td>${r.status}</td><td>${r.trigger_type}</td><td>${r.started}</td><td>${r.reason}</td>
      </tr>`)}</tbody>
    </table>
    ${open && html`<h3>${open.run.workflow} v${open.run.version}: ${open.run.status}</h3>
      <${Timeline} run=${open.run} steps=${open.steps} />`}`;
}

export function Workflows({ me }) {
  const readable = me.scopes.includes("workflows:read") || me.scopes.includes("admin");
  return html`<section aria-labelledby="workflows-title">
    <h2 id="workflows-title">Workflows</h2>
    ${readable ? html`<${Runs} /><${Definitions} me=${me} />`
      : html`<p class="muted">This token has no <code>workflows:read</code> scope.</p>`}
  </section>`;
}
