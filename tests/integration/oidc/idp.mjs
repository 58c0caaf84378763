// A real OpenID Connect issuer on loopback for the console's sign-in test: panva's
// oidc-provider, its development login page (any login and password), one public client
// (the console: authorization code with PKCE, its consent page listing the scopes), access
// tokens as JWTs for the fabric.
//
//   node idp.mjs PORT REDIRECT_URI AUDIENCE
//
// The person "alice@acme" is of tenant "acme" (the token's `tenant` claim).
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import Provider from "oidc-provider";

const [port, redirectUri, audience] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const SCOPES = ["admin", "audit:read", "workflows:read", "context:read:*"];
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "test-issuer", use: "sig", alg: "RS256" };

const provider = new Provider(issuer, {
  clients: [{ client_id: "fabric-console", token_endpoint_auth_method: "none", redirect_uris: [redirectUri],
              grant_types: ["authorization_code"], response_types: ["code"] }],
  jwks: { keys: [jwk] },
  cookies: { keys: ["a test issuer's cookie key"] },
  scopes: ["openid", ...SCOPES],
  pkce: { required: () => true },
  clientBasedCORS: () => true,
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ scope: SCOPES.join(" "), audience, accessTokenFormat: "jwt",
                                      accessTokenTTL: 600, jwt: { sign: { alg: "RS256" } } }),
    },
  },
  findAccount: (_ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  extraTokenClaims: (_ctx, token) => ({ tenant: String(token.accountId).split("@")[1] || "nobody" }),
});

http.createServer(provider.callback()).listen(Number(port), "127.0.0.1", () => console.log(`issuer ${issuer} ready`));
