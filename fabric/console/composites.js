// Composites: the live feed of what CEP detected, each with its contributing events, each
// event linked to the context it belongs to (looked up in the raw trail: GET /v1/trail).
import { html, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf, usePoll } from "./common.js";

export function Composites({ open }) {
  const [items, setItems] = useState([]);
  const [where, setWhere] = useState({}); // event id -> {context_type, subject}
  const [error, setError] = useState("");
  usePoll(async (wanted) => {
    const res = await api("/v1/composites?limit=20");
    if (!wanted()) return;
    setError(errorOf(res));
    if (!res.ok) return;
    const found = res.body.items || [];
    setItems(found);
    const ids = [...new Set(found.flatMap((c) => ((c.event.data && c.event.data.events) || []).map((e) => e.id)))]
      .filter((id) => id && !(id in where)).slice(0, 50);
    if (!ids.length) return;
    const trail = await api(`/v1/trail?ids=${ids.map(encodeURIComponent).join(",")}`);
    if (wanted() && trail.ok) setWhere((w) => ({ ...w, ...Object.fromEntries(trail.body.events.map((e) => [e.id, e])) }));
  }, 2000, []);
  const contributor = (ev) => {
    const at = where[ev.id];
    const label = html`<code>${ev.id}</code>`;
    const place = at && html`<a href="#" data-event=${ev.id} title=${`open ${at.context_type} / ${at.subject}`}
        onClick=${(e) => { e.preventDefault(); open(at.context_type, at.subject); }}>${label}</a>`;
    const inContext = at ? `${at.context_type} / ${at.subject}, ` : "";
    return html`<div class="contributor">${place || label} <span class="muted">${inContext}${ev.topic}@${ev.offset}, ${ev.time}</span></div>`;
  };
  return html`<section aria-labelledby="composites-title">
    <h2 id="composites-title">Composites</h2>
    ${error && html`<p role="alert" class="error">${error}</p>`}
    <table aria-label="Composite feed">
      <thead><tr><th>Type</th><th>Subject</th><th>As of</th><th>Contributing events</th></tr></thead>
      <tbody>${items.map((c) => html`<tr class="composite">
        <td>${c.event.type}</td><td>${c.subject}</td><td>${c.as_of}</td>
        <td>${((c.event.data && c.event.data.events) || []).map(contributor)}</td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}
