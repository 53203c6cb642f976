// cocoon dashboard: reads this origin's /jsonstats every 1.5 s and draws it. No library, no other origin.
// A process's stats give one panel; the network view's (`cocoon up`) give { network: true, processes: [...] }.
// Every string from the stats goes into the page as text (never as HTML): worker names come from the network.
"use strict";
(() => {
  const REFRESH_MS = 1500;
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const root = document.getElementById("root");
  const statusLine = document.getElementById("status");
  const COLORS = ["#2f6fde", "#e0803a", "#1f9d55", "#d64545", "#8a5cd0"];

  // ---- building blocks ----
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v; else el.setAttribute(k, String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const svgNS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return el;
  }

  // ---- formatting ----
  function ton(nano) {
    // exact, from the integer: 1234567 nanoTON -> "0.001234567 TON"
    if (nano === null || nano === undefined) return "–";
    const n = Math.trunc(Number(nano));
    const sign = n < 0 ? "-" : "";
    const abs = Math.abs(n);
    const whole = Math.floor(abs / 1e9).toLocaleString("en-US");
    const frac = String(abs % 1e9).padStart(9, "0").replace(/0+$/, "");
    return `${sign}${whole}${frac ? "." + frac : ""} TON`;
  }
  const num = (v, digits = 0) => (v === null || v === undefined || Number.isNaN(v) ? "–"
    : Number(v).toLocaleString("en-US", { maximumFractionDigits: digits }));
  const ms = (v) => (v === null || v === undefined ? "–" : `${num(v, v < 10 ? 1 : 0)} ms`);
  const short = (hex, n = 12) => (hex ? String(hex).slice(0, n) : "–");
  function rel(ts, now) {
    if (!ts) return "–";
    const d = ts - now;
    const a = Math.abs(d);
    const text = a < 90 ? `${Math.round(a)} s` : a < 5400 ? `${Math.round(a / 60)} min`
      : a < 172800 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
    return d >= 0 ? `in ${text}` : `${text} ago`;
  }

  // ---- pieces of a panel ----
  function kpi(label, value, field, raw) {
    return h("div", { class: "kpi", "data-field": field, "data-value": raw },
      h("div", { class: "label" }, label), h("div", { class: "value" }, value));
  }
  function table(headers, rows, attrs) {
    if (!rows.length) return h("p", { class: "muted" }, "none yet");
    return h("div", { class: "scroll" }, h("table", attrs || {},
      h("thead", {}, h("tr", {}, headers.map(([t, cls]) => h("th", { class: cls }, t)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) =>
        h("td", { class: headers[i][1] }, c)))))));
  }
  function rate(series, name, buckets = 5) {
    // events per second over the last few complete buckets
    const counts = (series && series.counts && series.counts[name]) || [];
    const recent = counts.slice(-buckets - 1, -1);
    if (!recent.length) return null;
    return recent.reduce((a, b) => a + b, 0) / (recent.length * series.bucket_s);
  }

  // A line chart of several series over the window's buckets, drawn as SVG by hand.
  function chart(name, title, unit, lines, series) {
    const W = 320, H = 120, L = 34, R = 6, T = 8, B = 18;
    const n = series && series.t ? series.t.length : 0;
    const values = lines.flatMap((l) => l.values.filter((v) => v !== null && v !== undefined));
    const max = Math.max(1e-9, ...values) * 1.15;
    const x = (i) => L + (n > 1 ? (i / (n - 1)) * (W - L - R) : 0);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title,
      "data-chart": name });
    for (const f of [0, 0.5, 1]) {
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
      svg.append(s("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, values.length ? num(max * f, max < 10 ? 1 : 0) : ""));
    }
    if (n) {
      const span = Math.round((n * series.bucket_s) / 60);
      svg.append(s("text", { x: L, y: H - 4 }, `−${span} min`));
      svg.append(s("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
    }
    lines.forEach((line, k) => {
      let d = "", points = 0, pen = false;
      line.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true; points += 1;
        const prev = line.values[i - 1], next = line.values[i + 1];
        if ((prev === null || prev === undefined) && (next === null || next === undefined)) {
          svg.append(s("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2, fill: line.color || COLORS[k] }));
        }
      });
      svg.append(s("path", { d: d || "M0,0", stroke: line.color || COLORS[k], "data-series": line.name,
        "data-points": points }));
    });
    if (!values.length) svg.append(s("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
    return h("figure", {}, svg, h("figcaption", {}, h("strong", {}, title),
      lines.map((l, k) => h("span", {}, swatch(l.color || COLORS[k]), l.name)),
      unit ? h("span", { class: "muted" }, unit) : null));
  }
  const perSecond = (series, name) => ((series && series.counts && series.counts[name]) || [])
    .map((c) => c / series.bucket_s);
  const pick = (series, q, name) => (series && series[q] && series[q][name]) || [];

  function link(up, where) {
    return h("span", { class: `pill ${up ? "ok" : "bad"}` }, `${up ? "linked" : "down"}${where ? " · " + where : ""}`);
  }

  // ---- one panel per role ----
  function proxyPanel(st) {
    const workers = st.workers || [];
    const books = st.books || {};
    const outcomes = st.requests || {};
    const errors = Object.entries(outcomes).filter(([code]) => code !== "ok").sort((a, b) => b[1] - a[1]);
    const settle = st.settlement || {};
    return [
      h("div", { class: "kpis" },
        kpi("workers", num(workers.length), "workers", workers.length),
        kpi("clients", num(st.clients), "clients", st.clients),
        kpi("requests/s", num(rate(st.series, "requests"), 1), "rps"),
        kpi("latency p50 / p99", `${ms(st.latency_ms && st.latency_ms.p50)} / ${ms(st.latency_ms && st.latency_ms.p99)}`, "latency"),
        kpi("first token p50", ms(st.ttft_ms && st.ttft_ms.p50), "ttft"),
        kpi("active / waiting", `${num(st.active_requests)} / ${num(st.waiting_requests)}`, "load"),
        kpi("charged", ton(books.charged_nanoton), "charged_nanoton", books.charged_nanoton),
        kpi("commission", ton(books.commission_nanoton), "commission_nanoton", books.commission_nanoton)),
      h("div", { class: "charts" },
        chart("requests", "Requests per second", "", [
          { name: "ended", values: perSecond(st.series, "requests") },
          { name: "errors", values: perSecond(st.series, "errors"), color: "#d64545" }], st.series),
        chart("latency", "Latency", "ms", [
          { name: "p50", values: pick(st.series, "p50", "latency_ms") },
          { name: "p99", values: pick(st.series, "p99", "latency_ms") }], st.series),
        chart("ttft", "Time to first token", "ms", [
          { name: "p50", values: pick(st.series, "p50", "ttft_ms") },
          { name: "p99", values: pick(st.series, "p99", "ttft_ms") }], st.series)),
      h("h3", {}, "Connected workers"),
      table([["name"], ["models"], ["region"], ["image"], ["attestation"], ["cert expires"], ["load", "num"],
        ["success", "num"], ["first token", "num"], ["tokens/s", "num"], ["earned", "num"]],
      workers.map((w) => [h("span", { "data-worker": w.name }, w.name), (w.models || []).join(", "), w.region,
        h("span", { class: "mono" }, short(w.image_hash)), w.attestation || "–", rel(w.cert_expires_at, st.now),
        `${num(w.active)} / ${num(w.max_active)}`,
        w.success === null || w.success === undefined ? "–" : `${num(w.success * 100, 1)}%`,
        ms(w.ttft_ms), num(w.tokens_per_s, 1), ton(w.earned_nanoton)]), { "data-table": "workers" }),
      h("h3", {}, "Clients (books)"),
      table([["channel"], ["requests", "num"], ["tokens", "num"], ["charged", "num"], ["claimed", "num"],
        ["balance", "num"]],
      Object.entries(books.clients || {}).map(([id, c]) => [h("span", { class: "mono" }, short(c.channel || id, 16)),
        num(c.requests), num(c.tokens), ton(c.charged_nanoton), ton(c.claimed_nanoton), ton(c.balance_nanoton)])),
      h("h3", {}, "Errors by code"),
      table([["code"], ["count", "num"]], errors.map(([code, n]) => [h("code", {}, code), num(n)]),
        { "data-table": "errors" }),
      h("h3", {}, "Money"),
      table([["charged to clients"], ["paid to workers"], ["commission"], ["claimed"], ["next commit"]],
        [[ton(books.charged_nanoton), ton(books.paid_nanoton), ton(books.commission_nanoton),
          ton(settle.claimed_nanoton), settle.next_commit_at ? rel(settle.next_commit_at, st.now) : "payments off"]]),
    ];
  }

  function workerPanel(st) {
    const id = st.identity || {};
    return [
      h("div", { class: "kpis" },
        kpi("engine", st.engine, "engine"),
        kpi("model", (st.models || []).join(", ") || "–", "models"),
        kpi("model hash", short(st.model_hash), "model_hash"),
        kpi("tokens/s", num(rate(st.series, "completion_tokens"), 1), "tokens_per_s"),
        kpi("active", `${num(st.active_requests)} / ${num(st.max_active_requests)}`, "active"),
        kpi("served", num(st.served), "served", st.served),
        kpi("earned", ton(st.earned_nanoton), "earned_nanoton", st.earned_nanoton),
        kpi("redeemed", ton(st.redeemed_nanoton), "redeemed_nanoton", st.redeemed_nanoton)),
      h("div", { class: "charts" },
        chart("tokens", "Tokens per second", "", [
          { name: "generated", values: perSecond(st.series, "completion_tokens") }], st.series),
        chart("latency", "Request time", "ms", [
          { name: "p50", values: pick(st.series, "p50", "latency_ms") },
          { name: "p99", values: pick(st.series, "p99", "latency_ms") }], st.series)),
      h("h3", {}, "Proxy and attestation"),
      table([["proxy"], ["link"], ["attestation"], ["image"], ["cert expires"]],
        [[h("span", { class: "mono" }, st.proxy || "–"), link(st.proxy_connected), id.attestation || "–",
          h("span", { class: "mono" }, short(id.image_hash)), rel(id.cert_expires_at, st.now)]]),
    ];
  }

  function clientPanel(st) {
    const outcomes = st.requests || {};
    const total = Object.values(outcomes).reduce((a, b) => a + b, 0);
    const models = Object.entries(st.models || {});
    return [
      h("div", { class: "kpis" },
        kpi("charged", ton(st.charged_nanoton), "charged_nanoton", st.charged_nanoton),
        kpi("balance", ton(st.balance_nanoton), "balance_nanoton", st.balance_nanoton),
        kpi("requests ok / all", `${num(outcomes.ok || 0)} / ${num(total)}`, "requests", total),
        kpi("active", num(st.active_requests), "active"),
        kpi("latency p50 / p99", `${ms(st.latency_ms && st.latency_ms.p50)} / ${ms(st.latency_ms && st.latency_ms.p99)}`, "latency"),
        kpi("first token p50", ms(st.ttft_ms && st.ttft_ms.p50), "ttft")),
      h("div", { class: "charts" },
        chart("requests", "Requests per second", "", [
          { name: "ended", values: perSecond(st.series, "requests") },
          { name: "errors", values: perSecond(st.series, "errors"), color: "#d64545" }], st.series),
        chart("latency", "Latency", "ms", [
          { name: "p50", values: pick(st.series, "p50", "latency_ms") },
          { name: "p99", values: pick(st.series, "p99", "latency_ms") }], st.series)),
      h("h3", {}, "Latency by model (last 5 min)"),
      table([["model"], ["answers", "num"], ["p50", "num"], ["p99", "num"]],
        models.map(([m, r]) => [m, num(r.n), ms(r.p50), ms(r.p99)])),
      h("h3", {}, "Proxy link and payment channels"),
      table([["proxy"], ["link"], ["channel"]],
        (st.proxies || [st.proxy]).map((p) => [h("span", { class: "mono" }, p), link(st.proxy_connected && p === st.proxy),
          h("span", { class: "mono" }, short((st.channels || {})[p], 20))])),
      h("h3", {}, "Recent errors"),
      table([["when"], ["code"]], (st.recent_errors || []).slice().reverse()
        .map((e) => [rel(e.at, st.now), h("code", {}, e.code)]), { "data-table": "recent-errors" }),
    ];
  }

  const PANELS = { proxy: proxyPanel, worker: workerPanel, client: clientPanel };

  function panel(role, name, st, error) {
    const body = error ? [h("p", { class: "down" }, `no stats: ${error}`)] : (PANELS[role] || (() => []))(st);
    const up = st && st.uptime_s !== undefined ? `up ${rel(st.now - st.uptime_s, st.now).replace(" ago", "")}` : "";
    return h("section", { class: `process ${role}`, "data-process": name, "data-role": role },
      h("h2", {}, h("span", { class: `role ${role}` }, role), name, h("span", { class: "sub" }, up)), body);
  }

  const ORDER = { proxy: 0, worker: 1, client: 2 };
  function render(data) {
    let view;
    if (data.network) {
      document.getElementById("title").textContent = "local network";
      const procs = (data.processes || []).slice().sort((a, b) => (ORDER[a.role] ?? 9) - (ORDER[b.role] ?? 9));
      view = h("div", { class: "network" }, procs.map((p) => panel(p.role, p.name, p.stats, p.error)));
    } else {
      document.getElementById("title").textContent = `${data.role} ${data.name}`;
      view = panel(data.role, data.name, data, null);
    }
    root.replaceChildren(view);
    document.body.dataset.updated = String(Date.now());
  }
  // a legend's colour, as SVG: the page's policy forbids inline styles
  function swatch(color) {
    const svg = s("svg", { width: 12, height: 4, class: "swatch" });
    svg.append(s("rect", { width: 12, height: 4, fill: color }));
    return svg;
  }

  function setStatus(state, text) {
    statusLine.dataset.state = state;
    statusLine.textContent = text;
  }

  async function tick() {
    try {
      const resp = await fetch("/jsonstats", { cache: "no-store",
        headers: token ? { Authorization: `Bearer ${token}` } : {} });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      render(await resp.json());
      setStatus("live", `live · ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setStatus("stale", `no data (${err.message}); retrying`);
    } finally {
      setTimeout(tick, REFRESH_MS);
    }
  }
  tick();
})();
