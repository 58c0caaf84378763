// What every view shares: calls to the router with the signed-in token, polling,
// server-sent events, small formatting helpers.
import { html, useEffect } from "./vendor/htm-preact.module.js";

export const TOKEN_KEY = "fabric.console.token";

/** Call the router with the token; resolves to {ok, status, body} and never throws on HTTP errors. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  try {
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { error: text }; }
    return { ok: r.ok, status: r.status, body: parsed };
  } catch (e) {
    return { ok: false, status: 0, body: { error: `the router did not answer: ${e.message}` } };
  }
}

export function errorOf(res) {
  return res.ok ? "" : `${res.status || "network"}: ${(res.body && res.body.error) || "request failed"}`;
}

/** Poll `load` every `ms` while the view is shown; `load(wanted)` keeps an answer only while
 * `wanted()` (the view and its inputs did not change while the request was out). */
export function usePoll(load, ms, deps) {
  useEffect(() => {
    let alive = true;
    const wanted = () => alive;
    const tick = async () => { if (alive) await load(wanted); };
    tick();
    const id = setInterval(tick, ms);
    return () => { alive = false; clearInterval(id); };
  }, deps);
}

/** Read a server-sent event stream with the bearer token (EventSource cannot send one);
 * calls `onData` with each `data:` payload until `signal` aborts. */
export async function stream(path, onData, signal) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  const r = await fetch(path, { headers, signal });
  if (!r.ok) throw new Error(`${r.status}: ${((await r.json().catch(() => ({}))).error) || "refused"}`);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data && !frame.startsWith("event: end")) onData(JSON.parse(data));
    }
  }
}

export function Sparkline({ values, label }) {
  const max = Math.max(1, ...values);
  const w = 120, h = 24, step = w / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(h - (v / max) * (h - 2) - 1).toFixed(1)}`).join(" ");
  return html`<svg class="spark" width=${w} height=${h} viewBox=${`0 0 ${w} ${h}`} role="img" aria-label=${label}>
    <polyline points=${points} fill="none" stroke="currentColor" stroke-width="1.5" /></svg>`;
}

/** The line of `text` where the last key of a field path (`sequence.steps[1].where`) is written. */
export function lineOf(text, field) {
  const key = (field || "").split(".").pop().replace(/\[\d+\]$/, "");
  if (!key) return 0;
  const written = new RegExp(`(^\\s*(- )?|[{,]\\s*)${key}:`); // a block key, or a key inside {...}
  const at = text.split("\n").findIndex((l) => written.test(l));
  return at + 1;
}

/** ClickHouse times as the store answers them ("2026-12-05 22:35:30.121000+00:00") -> ms. */
export const msOf = (t) => (t && t !== "None" ? Date.parse(String(t).replace(" ", "T")) : NaN);
