// The Context Fabric console: one page, Preact with htm templates, no build step.
// Every view reads the same /v1 endpoints a copilot calls, with the signed-in bearer
// token, so it shows exactly what the token's tenant and scopes allow.
import { html, render, useEffect, useState } from "./vendor/htm-preact.module.js";
import { Audit } from "./audit.js";
import { api, errorOf, TOKEN_KEY } from "./common.js";
import { Composites } from "./composites.js";
import { Contexts } from "./contexts.js";
import { Flow } from "./flow.js";
import { Patterns } from "./patterns.js";
import { Policies } from "./policies.js";
import { Workflows } from "./workflows.js";

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
