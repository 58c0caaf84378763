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
import { finishSignIn, SignIn } from "./signin.js";
import { Workflows } from "./workflows.js";

const VIEWS = { flow: Flow, contexts: Contexts, composites: Composites, policies: Policies, patterns: Patterns,
                workflows: Workflows, audit: Audit };

function Console() {
  const [me, setMe] = useState(null);
  const [failed, setFailed] = useState("");
  const [view, setView] = useState("contexts");  // the live flow needs audit:read; contexts is for everyone
  const [focus, setFocus] = useState(null); // a context another view asked to open
  const open = (type, subject) => { setFocus({ type, subject, at: Date.now() }); setView("contexts"); };
  useEffect(() => {
    (async () => {
      const why = await finishSignIn(); // back from the issuer, if that is where the person comes from
      if (why) return setFailed(why);
      if (!sessionStorage.getItem(TOKEN_KEY)) return;
      const res = await api("/v1/console/me");
      if (res.ok) setMe(res.body);
      else { sessionStorage.removeItem(TOKEN_KEY); setFailed(errorOf(res)); }
    })();
  }, []);
  const signOut = () => { sessionStorage.removeItem(TOKEN_KEY); setMe(null); };
  const View = VIEWS[view];
  return html`<header><h1>Context Fabric</h1>
      ${me && html`<span class="who">tenant <strong id="tenant">${me.tenant}</strong>
        <button type="button" onClick=${signOut}>Sign out</button></span>`}</header>
    ${me ? html`<nav aria-label="Views">${Object.keys(VIEWS).map((v) => html`<button type="button"
          aria-current=${v === view ? "page" : undefined} onClick=${() => setView(v)}>${v[0].toUpperCase() + v.slice(1)}</button>`)}</nav>
        <${View} me=${me} open=${open} focus=${focus} />`
      : html`<${SignIn} onSignedIn=${setMe} failed=${failed} />`}`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "Loading" line
render(html`<${Console} />`, root);
