// llmux admin dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
// It polls the admin JSON API on its own origin with the browser's credentials (HTTP
// Basic, asked for by the browser), or with those of the page's own URL when it was
// opened as http://user:KEY@host/...: the admin key is never part of the page.
// Every value from the API is written with textContent, never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 3000;
  const ENTRIES_MS = 30000; // counting cache entries scans the keyspace: not on every poll
  const HEALTH_MS = 30000; // deep health probes every provider: at most this often
  const MINUTES = 60;
  // The admin port refuses changes made with Basic auth unless this header is set,
  // which a cross-site form cannot do.
  const CHANGE = { "content-type": "application/json", "x-llmux-dashboard": "1" };
  const SVG = "http://www.w3.org/2000/svg";

  const state = { quota: null, health: null, healthAt: 0, entries: null, entriesAt: 0 };
  const $ = (id) => document.getElementById(id);

  // fetch refuses URLs with credentials, and relative paths resolve against the page's
  // URL: every call goes to the bare origin, and credentials the page's URL carried go
  // in an Authorization header. Without them, the browser's Basic login answers.
  const AUTH = (() => {
    const url = new URL(location.href);
    if (!url.username && !url.password) return {};
    const pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    const utf8 = new TextEncoder().encode(pair);
    return { authorization: `Basic ${btoa(String.fromCharCode(...utf8))}` };
  })();

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const whole = (n) => Math.round(n || 0).toLocaleString("en-US");
  const count = (n, noun) => `${whole(n)} ${noun}${n === 1 ? "" : noun.endsWith("s") ? "es" : "s"}`;

  // Dollars with cents; sub-cent amounts with two significant digits.
  const money = (n) => (n > 0 && n < 0.01 ? `$${n.toPrecision(2)}` : `$${(n || 0).toFixed(2)}`);

  function short(n) {
    n = n || 0;
    if (n >= 1e9) return `${+(n / 1e9).toFixed(1)}G`;
    if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
    if (n >= 1e4) return `${+(n / 1e3).toFixed(1)}k`;
    return whole(n);
  }

  function bytes(n) {
    if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
    if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
    return `${n} B`;
  }

  const pad = (n) => String(n).padStart(2, "0");
  const clock = (seconds) => {
    const d = new Date(seconds * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };
  const hhmm = (seconds) => clock(seconds).slice(0, 5);

  function badge(text, kind) {
    return el("span", { class: `badge ${kind || ""}` }, text);
  }

  function emptyRow(tbody, columns, text) {
    tbody.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: columns }, text)));
  }

  async function api(path, options) {
    const response = await fetch(location.origin + path, {
      credentials: "same-origin",
      cache: "no-store",
      ...options,
      headers: { ...AUTH, ...(options && options.headers) },
    });
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    // /health answers 503 with a useful body when the store is down.
    if (!response.ok && !(body && path.startsWith("/health"))) {
      const message = (body && body.error && body.error.message) || response.statusText;
      throw new Error(`${path.split("?")[0]}: ${response.status} ${message}`);
    }
    return body;
  }

  function showProblem(node, messages) {
    node.hidden = messages.length === 0;
    node.textContent = messages.join("; ");
  }

  // ------------------------------------------------------------------ activity

  function renderActivity(data) {
    const totals = {
      requests: 0, errors: 0, input_tokens: 0, output_tokens: 0, cache_hits: 0, cost_nano_usd: 0,
    };
    for (const minute of data.series) for (const name in totals) totals[name] += minute[name] || 0;
    $("total-requests").textContent = whole(totals.requests);
    $("total-errors").textContent = count(totals.errors, "error");
    $("total-tokens").textContent = `${short(totals.input_tokens)} / ${short(totals.output_tokens)}`;
    $("total-cache-hits").textContent = `${whole(totals.cache_hits)} answered from the cache`;
    $("total-cost").textContent = `${money(totals.cost_nano_usd / 1e9)} spent`;
    drawChart(data.series);
    renderRecent(data.recent);
  }

  function renderRecent(records) {
    const tbody = $("recent").tBodies[0];
    if (!records.length) return emptyRow(tbody, 11, "No requests yet");
    tbody.replaceChildren(
      ...records.map((r) => {
        const tokens =
          r.input_tokens === undefined && r.output_tokens === undefined
            ? ""
            : `${whole(r.input_tokens)} / ${whole(r.output_tokens)}`;
        const status = r.status >= 400 ? "bad" : r.status >= 300 ? "warn" : "ok";
        return el(
          "tr",
          { "data-testid": "recent-row", "data-model": r.model, "data-provider": r.provider },
          el("td", {}, r.ts ? clock(r.ts) : ""),
          el("td", {}, r.client_api),
          el("td", {}, r.model),
          el("td", {}, r.provider),
          el("td", {}, r.upstream_model),
          el("td", { class: "num" }, badge(String(r.status), status)),
          el("td", { class: "num" }, tokens),
          el("td", { class: "num" }, r.cost_usd === undefined ? "" : money(r.cost_usd)),
          el("td", { class: "num" }, r.duration_ms === undefined ? "" : `${whole(r.duration_ms)} ms`),
          el("td", {}, r.cache),
          el("td", {}, el("code", {}, r.key_id || "")),
        );
      }),
    );
  }

  // Axis step of 1, 2 or 5 × 10^k so that four steps cover `max`.
  function step(max) {
    const rough = max / 4;
    if (rough <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(rough));
    for (const m of [1, 2, 5, 10]) if (m * power >= rough) return m * power;
    return 10 * power;
  }

  // Chart geometry in SVG user units; the SVG scales to the section's width.
  const CHART = { W: 960, H: 250, left: 48, right: 56, top: 24, bottom: 26 };

  function chartScale(series) {
    const { W, H, left, right, top, bottom } = CHART;
    const plotH = H - top - bottom;
    const tokens = series.map((s) => (s.input_tokens || 0) + (s.output_tokens || 0));
    const reqStep = step(Math.max(...series.map((s) => s.requests), 1));
    const tokStep = step(Math.max(...tokens, 1));
    const slot = (W - left - right) / Math.max(1, series.length);
    return {
      tokens, reqStep, tokStep, slot,
      x: (i) => left + i * slot + slot / 2, // the centre of minute i
      yReq: (n) => top + plotH - (plotH * n) / (reqStep * 4),
      yTok: (n) => top + plotH - (plotH * n) / (tokStep * 4),
    };
  }

  function drawAxes(root, scale) {
    const { W, left, right } = CHART;
    for (let i = 0; i <= 4; i++) {
      const y = scale.yReq(scale.reqStep * i);
      root.append(svg("line", { class: i ? "grid" : "axis", x1: left, x2: W - right, y1: y, y2: y }));
      root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, short(scale.reqStep * i)));
      root.append(svg("text", { x: W - right + 6, y: y + 4 }, short(scale.tokStep * i)));
    }
    root.append(svg("text", { x: 0, y: 10 }, "requests"));
    root.append(svg("text", { x: W - right + 6, y: 10 }, "tokens"));
  }

  function drawBars(root, series, scale) {
    const width = Math.max(1, scale.slot * 0.7);
    const base = scale.yReq(0);
    series.forEach((s, i) => {
      const x = scale.x(i) - width / 2;
      if (s.requests) {
        const y = scale.yReq(s.requests);
        const bar = svg("rect", { class: "bar", x, y, width, height: base - y, "data-testid": "chart-bar" });
        const tip = `${hhmm(s.minute)}: ${s.requests} requests, ${s.errors} errors, ` +
          `${scale.tokens[i]} tokens, ${s.cache_hits} cache hits`;
        bar.append(svg("title", {}, tip));
        root.append(bar);
      }
      if (s.errors) {
        const y = scale.yReq(s.errors);
        root.append(svg("rect", { class: "bar errors", x, y, width, height: base - y }));
      }
      if ((series.length - 1 - i) % 10 === 0) {
        const label = { x: scale.x(i), y: CHART.H - 6, "text-anchor": "middle" };
        root.append(svg("text", label, hhmm(s.minute)));
      }
    });
  }

  function drawTokens(root, scale) {
    const points = scale.tokens.map((n, i) => `${scale.x(i)},${scale.yTok(n)}`).join(" ");
    root.append(svg("polyline", { class: "tokens", points, "data-testid": "chart-tokens" }));
    scale.tokens.forEach((n, i) => {
      if (n) root.append(svg("circle", { class: "dot", cx: scale.x(i), cy: scale.yTok(n), r: 2.5 }));
    });
  }

  function drawChart(series) {
    const scale = chartScale(series);
    const root = svg("svg", {
      viewBox: `0 0 ${CHART.W} ${CHART.H}`,
      role: "img",
      "aria-label": "Requests (bars) and tokens (line) per minute",
      "data-testid": "chart-svg",
    });
    drawAxes(root, scale);
    drawBars(root, series, scale);
    drawTokens(root, scale);
    const legend = el(
      "div",
      { class: "legend" },
      el("span", {}, el("i", { class: "requests" }), "requests (left axis)"),
      el("span", {}, el("i", { class: "errors" }), "errors"),
      el("span", {}, el("i", { class: "tokens" }), "tokens in + out (right axis)"),
    );
    $("chart").replaceChildren(root, legend);
  }

  // ------------------------------------------------------------------ providers

  function renderStatus() {
    const health = state.health;
    const pill = $("status");
    if (!health) return;
    pill.textContent = health.ready ? `ready · store ${health.store}` : `not ready · store ${health.store}`;
    pill.className = `pill ${health.ready ? "ok" : "bad"}`;
  }

  function quotaCell(quota) {
    if (!quota.limit) return `${whole(quota.used)} (no limit)`;
    return `${whole(quota.used)} / ${whole(quota.limit)} (${whole(quota.remaining)} left)`;
  }

  function renderCredentials() {
    const tbody = $("credentials").tBodies[0];
    const rows = (state.quota && state.quota.credentials) || [];
    if (!rows.length) return emptyRow(tbody, 6, "No providers configured");
    const health = {};
    for (const probe of (state.health && state.health.providers) || []) health[probe.provider] = probe;
    tbody.replaceChildren(
      ...rows.map((row) => {
        const probe = health[row.provider];
        const healthy = !probe
          ? badge("checking…")
          : badge(
              probe.latency_ms === undefined ? probe.status : `${probe.status} · ${whole(probe.latency_ms)} ms`,
              probe.status === "ok" ? "ok" : "bad",
            );
        const cooling = row.cooldown_ms > 0
          ? badge(`cooling down ${Math.ceil(row.cooldown_ms / 1000)} s`, "warn")
          : "—";
        return el(
          "tr",
          { "data-testid": "credential-row", "data-provider": row.provider, "data-credential": row.credential },
          el("td", {}, row.provider),
          el("td", {}, healthy),
          el("td", {}, row.credential),
          el("td", { class: "num" }, quotaCell(row.rpm)),
          el("td", { class: "num" }, quotaCell(row.tpm)),
          el("td", {}, cooling),
        );
      }),
    );
  }

  function renderCache(stats) {
    const lookups = stats.hits + stats.misses;
    $("cache-hit-ratio").textContent = lookups ? `${(stats.hit_ratio * 100).toFixed(1)}%` : "–";
    if (stats.entries !== undefined) state.entries = stats;
    const stored = state.entries
      ? ` · ${whole(state.entries.entries)} entries · ${bytes(state.entries.bytes)}`
      : "";
    $("cache-detail").textContent = `${count(stats.hits, "hit")} · ${count(stats.misses, "miss")}${stored}`;
  }

  // ------------------------------------------------------------------ guardrails

  function renderGuardrails(data) {
    $("guardrails-section").hidden = data.rules.length === 0;
    $("guardrails").tBodies[0].replaceChildren(
      ...data.rules.map((rule) =>
        el("tr", {},
          el("td", {}, rule.name),
          el("td", {}, rule.detect),
          el("td", {}, badge(rule.action, rule.action === "block" ? "bad" : rule.action === "mask" ? "warn" : "")),
          el("td", { class: "num" }, whole(rule.request)),
          el("td", { class: "num" }, whole(rule.response)),
        ),
      ),
    );
  }

  // ------------------------------------------------------------------ virtual keys

  function meter(used, limit, text) {
    const bar = el("span", { class: "meter" }, el("span"));
    bar.firstChild.style.width = `${Math.min(100, (100 * used) / limit)}%`;
    return el("div", {}, bar, text);
  }

  function budgetCell(key) {
    if (!key.budget && !key.budget_usd) return "—";
    const cell = el("span");
    if (key.budget) {
      const used = key.budget_used || 0;
      const { tokens, period } = key.budget;
      cell.append(meter(used, tokens, `${short(used)} / ${short(tokens)} per ${period}`));
    }
    if (key.budget_usd) {
      const spent = key.budget_usd_spent || 0;
      const { amount, period } = key.budget_usd;
      cell.append(meter(spent, amount, `${money(spent)} / ${money(amount)} per ${period}`));
    }
    return cell;
  }

  function keyState(key) {
    if (key.revoked) return badge("revoked", "bad");
    if (key.expires_at && key.expires_at * 1000 <= Date.now()) return badge("expired", "warn");
    return badge("active", "ok");
  }

  function renderKeys(data) {
    const keys = data.keys;
    const revoked = keys.filter((k) => k.revoked).length;
    $("key-count").textContent = whole(keys.length - revoked);
    $("key-detail").textContent = `active · ${whole(revoked)} revoked`;
    const tbody = $("keys").tBodies[0];
    if (!keys.length) return emptyRow(tbody, 12, "No virtual keys yet");
    keys.sort((a, b) => a.revoked - b.revoked || b.created_at - a.created_at);
    tbody.replaceChildren(
      ...keys.map((key) => {
        const usage = key.usage || {};
        const revoke = key.revoked
          ? ""
          : el("button", { type: "button", class: "danger", "data-testid": `revoke-${key.id}` }, "Revoke");
        if (revoke) revoke.addEventListener("click", () => revokeKey(key));
        return el(
          "tr",
          { class: key.revoked ? "revoked" : "", "data-testid": "key-row", "data-key-id": key.id },
          el("td", {}, el("code", {}, key.id)),
          el("td", {}, key.name),
          el("td", {}, key.tenant),
          el("td", {}, key.models ? key.models.join(", ") : "all"),
          el("td", { class: "num" }, key.rpm ? whole(key.rpm) : "—"),
          el("td", {}, budgetCell(key)),
          el("td", { class: "num" }, whole(usage.requests)),
          el("td", { class: "num" }, `${short(usage.input_tokens)} / ${short(usage.output_tokens)}`),
          el("td", { class: "num" }, money(usage.cost_usd)),
          el("td", { class: "num" }, whole(usage.cache_hits)),
          el("td", {}, keyState(key)),
          el("td", {}, revoke),
        );
      }),
    );
  }

  async function refreshKeys() {
    renderKeys(await api("/admin/keys?usage=true"));
  }

  async function revokeKey(key) {
    if (!window.confirm(`Revoke ${key.id} (${key.name})? Clients using it get 401 at once.`)) return;
    try {
      await api(`/admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE", headers: CHANGE });
      showProblem($("form-error"), []);
      await refreshKeys();
    } catch (error) {
      showProblem($("form-error"), [error.message]);
    }
  }

  function keySpec() {
    const spec = { name: $("key-name").value.trim() };
    const tenant = $("key-tenant").value.trim();
    if (tenant) spec.tenant = tenant;
    const models = $("key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
    if (models.length) spec.models = models;
    const rpm = parseInt($("key-rpm").value, 10);
    if (rpm > 0) spec.rpm = rpm;
    const tokens = parseInt($("key-budget").value, 10);
    if (tokens > 0) spec.budget = { tokens, period: $("key-period").value };
    const amount = parseFloat($("key-budget-usd").value);
    if (amount > 0) spec.budget_usd = { amount, period: $("key-period-usd").value };
    return spec;
  }

  async function createKey(event) {
    event.preventDefault();
    const form = event.target;
    const button = $("key-create");
    button.disabled = true;
    try {
      const body = JSON.stringify(keySpec());
      const created = await api("/admin/keys", { method: "POST", headers: CHANGE, body });
      $("created-id").textContent = created.id;
      $("created-secret").textContent = created.key;
      $("created").hidden = false;
      form.reset();
      showProblem($("form-error"), []);
      await refreshKeys();
    } catch (error) {
      showProblem($("form-error"), [error.message]);
    } finally {
      button.disabled = false;
    }
  }

  function forgetCreated() {
    $("created-secret").textContent = "";
    $("created-id").textContent = "";
    $("created").hidden = true;
  }

  // ------------------------------------------------------------------ polling

  async function refresh() {
    const now = Date.now();
    const jobs = [
      api(`/admin/activity?minutes=${MINUTES}`).then(renderActivity),
      api("/admin/quota").then((quota) => {
        state.quota = quota;
        renderCredentials();
      }),
      refreshKeys(),
      api("/admin/guardrails").then(renderGuardrails),
    ];
    const scan = now - state.entriesAt >= ENTRIES_MS;
    if (scan) state.entriesAt = now;
    jobs.push(api(`/admin/cache/stats${scan ? "" : "?entries=false"}`).then(renderCache, (error) => {
      if (scan) state.entriesAt = 0;
      throw error;
    }));
    if (now - state.healthAt >= HEALTH_MS) {
      state.healthAt = now;
      jobs.push(api("/health?deep=true").then((health) => {
        state.health = health;
        renderStatus();
        renderCredentials();
      }, (error) => {
        state.healthAt = 0;
        throw error;
      }));
    }
    const results = await Promise.allSettled(jobs);
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
    showProblem($("problem"), failed);
    $("updated").textContent = `updated ${clock(Date.now() / 1000)}`;
  }

  async function poll() {
    if (!document.hidden) await refresh();
    window.setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("create-key").addEventListener("submit", createKey);
    $("created-done").addEventListener("click", forgetCreated);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    poll();
  });
})();
