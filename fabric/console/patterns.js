// Patterns: the CEP patterns the tenant's events meet; apply YAML, remove the tenant's own.
import { html } from "./vendor/htm-preact.module.js";
import { canWrite, useYamlObjects, YamlEditor } from "./yamlobjects.js";

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
export function Patterns({ me }) {
  const objects = useYamlObjects("/v1/patterns", "patterns", EXAMPLE);
  return html`<section aria-labelledby="patterns-title">
    <h2 id="patterns-title">Patterns</h2>
    <table aria-label="Patterns">
      <thead><tr><th>Name</th><th>Kind</th><th>Version</th><th>Owner</th><th></th></tr></thead>
      <tbody>${objects.items.map((p) => html`<tr class="pattern"><td>${p.name}</td><td>${p.kind}</td><td>${p.version}</td>
        <td>${p.owner}</td><td>${p.owner === "tenant" && html`<button type="button"
          aria-label=${`Remove ${p.name}`} onClick=${() => objects.remove(p.name)}>Remove</button>`}</td></tr>`)}</tbody>
    </table>
    <${YamlEditor} id="pattern" label="Apply patterns (YAML)" objects=${objects} canWrite=${canWrite(me)} />
  </section>`;
}
