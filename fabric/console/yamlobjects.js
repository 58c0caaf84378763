// What the patterns and workflows views share: a tenant's objects applied as YAML, listed,
// removed, with the error of a bad file shown at its field and line.
import { html, useEffect, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf, lineOf } from "./common.js";

const NONE = { error: "", field: "", ok: "" };

/** The objects at `url` (GET lists them under `key`, POST {yaml} applies, DELETE url/NAME removes). */
export function useYamlObjects(url, key, example) {
  const [items, setItems] = useState([]);
  const [text, setText] = useState(example);
  const [message, setMessage] = useState(NONE);
  const load = async () => {
    const res = await api(url);
    if (res.ok) setItems(res.body[key]);
    else setMessage({ ...NONE, error: errorOf(res) });
  };
  useEffect(() => { load(); }, []);
  async function apply() {
    const res = await api(url, { method: "POST", body: { yaml: text } });
    if (res.ok) {
      const warned = (res.body.warnings || []).length ? ` (warnings: ${res.body.warnings.join("; ")})` : "";
      setMessage({ ...NONE, ok: `applied ${res.body.applied.join(", ")}${warned}` });
      load();
    } else setMessage({ ...NONE, error: (res.body && res.body.problem) || errorOf(res), field: (res.body && res.body.field) || "" });
  }
  async function remove(name) {
    const res = await api(`${url}/${encodeURIComponent(name)}`, { method: "DELETE" });
    setMessage(res.ok ? { ...NONE, ok: `removed ${name}` } : { ...NONE, error: errorOf(res) });
    load();
  }
  return { items, text, setText, message, apply, remove };
}

/** The YAML editor of `useYamlObjects`: ids `${id}-text`, `${id}-error`, `${id}-error-field`, `${id}-ok`. */
export function YamlEditor({ id, label, objects, canWrite }) {
  const { text, setText, message, apply } = objects;
  const line = message.field ? lineOf(text, message.field) : 0;
  return html`<label for=${`${id}-text`}>${label}</label>
    <textarea id=${`${id}-text`} spellcheck=${false} value=${text} aria-invalid=${message.error ? "true" : "false"}
              aria-describedby=${`${id}-error`} onInput=${(e) => setText(e.target.value)}></textarea>
    <div id=${`${id}-error`} role=${message.error ? "alert" : undefined}>${message.error && html`<p class="error">
      ${message.field && html`at <code id=${`${id}-error-field`}>${message.field}</code>${line ? ` (line ${line})` : ""}: `}${message.error}</p>`}</div>
    ${message.ok && html`<p role="status" class="ok" id=${`${id}-ok`}>${message.ok}</p>`}
    <p><button class="primary" type="button" id=${`${id}-apply`} onClick=${apply} disabled=${!canWrite}
        title=${canWrite ? "" : "applying needs the registry:write (or admin) scope"}>Apply</button></p>`;
}

/** Whether the signed-in token may apply and remove the tenant's objects. */
export const canWrite = (me) => me.scopes.includes("admin") || me.scopes.includes("registry:write");
