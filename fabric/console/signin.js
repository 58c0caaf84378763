// Signing in: paste a token (dev: `fabric token`), or, with an OIDC issuer configured, the
// authorization-code flow with PKCE (RFC 7636): the browser is a public client, the code
// comes back to /console and is traded, with the verifier, for an access token.
import { html, useEffect, useState } from "./vendor/htm-preact.module.js";
import { api, errorOf, TOKEN_KEY } from "./common.js";

const FLOW_KEY = "fabric.console.oidc"; // the sign-in under way: verifier, state, where to trade the code

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));
const redirectUri = () => `${location.origin}/console`;

/** Send the person to the issuer: S256 challenge of a fresh verifier, a fresh state. */
async function startSignIn(oidc) {
  const verifier = random(48), state = random(24);
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem(FLOW_KEY, JSON.stringify({ verifier, state, token_endpoint: oidc.token_endpoint,
                                                    client_id: oidc.client_id, resource: oidc.resource }));
  const q = new URLSearchParams({ response_type: "code", client_id: oidc.client_id, redirect_uri: redirectUri(),
                                  scope: oidc.scope, state, code_challenge: challenge, code_challenge_method: "S256" });
  if (oidc.resource) q.set("resource", oidc.resource);
  location.assign(`${oidc.authorization_endpoint}?${q}`);
}

/** Back from the issuer (?code=&state=, or ?error=): trade the code for a token. Resolves to
 * "" when there was nothing to finish or it went well, else the reason it did not. */
export async function finishSignIn() {
  const q = new URLSearchParams(location.search);
  if (!q.has("code") && !q.has("error")) return "";
  const flow = JSON.parse(sessionStorage.getItem(FLOW_KEY) || "null");
  sessionStorage.removeItem(FLOW_KEY);
  history.replaceState(null, "", "/console"); // the code is single-use; keep it out of the history
  if (q.has("error")) return `the issuer refused: ${q.get("error_description") || q.get("error")}`;
  if (!flow || q.get("state") !== flow.state) return "this sign-in was not started here (the state does not match)";
  const body = new URLSearchParams({ grant_type: "authorization_code", code: q.get("code"), redirect_uri: redirectUri(),
                                     client_id: flow.client_id, code_verifier: flow.verifier });
  if (flow.resource) body.set("resource", flow.resource);
  try {
    const r = await fetch(flow.token_endpoint, { method: "POST", body });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok || !answer.access_token) return `the issuer gave no token: ${answer.error_description || answer.error || r.status}`;
    sessionStorage.setItem(TOKEN_KEY, answer.access_token);
    return "";
  } catch (e) {
    return `the issuer did not answer: ${e.message}`;
  }
}

export function SignIn({ onSignedIn, failed }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(failed || "");
  const [oidc, setOidc] = useState(null);
  useEffect(() => {
    fetch("/v1/console/config").then((r) => r.json()).then((c) => setOidc(c.oidc || null)).catch(() => setOidc(null));
  }, []);
  useEffect(() => setError(failed || ""), [failed]);
  async function submit(e) {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    const res = await api("/v1/console/me");
    if (res.ok) onSignedIn(res.body);
    else { sessionStorage.removeItem(TOKEN_KEY); setError(errorOf(res)); }
  }
  return html`<section aria-labelledby="signin-title">
    <h2 id="signin-title">Sign in</h2>
    ${oidc && html`<p><button class="primary" type="button" id="oidc-signin" onClick=${() => startSignIn(oidc)}>
      Sign in with ${new URL(oidc.issuer).host}</button></p><p class="muted">Or paste a token:</p>`}
    ${!oidc && html`<p class="muted">Paste a token (<code>fabric token --tenant T --scope ...</code>).</p>`}
    <form onSubmit=${submit}>
      <label for="token">Bearer token</label>
      <input id="token" name="token" size="80" autocomplete="off" value=${token}
             onInput=${(e) => setToken(e.target.value)} required />
      <p><button class="primary" type="submit">Sign in</button></p>
    </form>
    ${error && html`<p role="alert" class="error" id="signin-error">${error}</p>`}
  </section>`;
}
