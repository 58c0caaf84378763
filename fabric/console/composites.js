// Composites: the live feed of what CEP detected, each with its contributing events.
import { html, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf, usePoll } from "./common.js";

export function Composites() {
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
