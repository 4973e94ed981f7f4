// The Seam gateway dashboard: polls /dashboard/api/state with the admin bearer token and draws
// it with uPlot. The token comes from the URL fragment (#token=…, never sent to a server) or the
// form, and is kept in this tab's sessionStorage only. Every value from the server is written
// with textContent.
"use strict";

(() => {
  const TOKEN_KEY = "seam-admin-token";
  const COLORS = ["#2f6fdb", "#e0762b", "#2a9d5b", "#b53f8c", "#7a5cd6", "#c9a227", "#1f9bb3",
    "#d1453b", "#6b8e23", "#8c6d46", "#4b5563", "#e377c2", "#17becf", "#9467bd", "#bcbd22",
    "#7f7f7f"];
  const $ = (id) => document.getElementById(id);
  const charts = {};
  let token = null;
  let timer = null;

  function takeTokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return null;
    history.replaceState(null, "", location.pathname + location.search);
    return decodeURIComponent(m[1]);
  }

  function setStatus(status, text) {
    document.body.dataset.status = status;
    $("status").textContent = text;
  }

  function showLogin(message) {
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
  }

  async function poll() {
    clearTimeout(timer);
    let every = 2000;
    try {
      const r = await fetch("api/state", {
        headers: { Authorization: "Bearer " + token },
        cache: "no-store",
      });
      if (r.status === 401) {
        const body = await r.json().catch(() => ({}));
        sessionStorage.removeItem(TOKEN_KEY);
        setStatus("unauthorized", "not signed in");
        showLogin(body.error || "the admin token was refused");
        return;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      const s = await r.json();
      every = Math.max(250, s.sample_every_ms);
      $("login").hidden = true;
      $("main").hidden = false;
      render(s);
      setStatus("live", "live · " + new Date(s.now_unix_ms).toLocaleTimeString());
    } catch (e) {
      setStatus("error", "gateway unreachable: " + e.message);
    }
    timer = setTimeout(poll, every);
  }

  // --- formatting ---------------------------------------------------------------------------
  const fixed = (v, d) => (v === null || v === undefined ? "–" : v.toFixed(d));
  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(0) + " %");
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  function ago(unixMs, now) {
    if (!unixMs) return "never";
    const s = Math.max(0, (now - unixMs) / 1000);
    return s < 90 ? s.toFixed(1) + " s ago" : (s / 60).toFixed(0) + " min ago";
  }

  // --- charts -------------------------------------------------------------------------------
  function countPoints(data) {
    let n = 0;
    for (const series of data.slice(1)) {
      for (const v of series) if (v !== null && v !== undefined) n++;
    }
    return n;
  }

  // Draws `data` ([xs, ...series]) in the figure `id`; rebuilds the chart when the series change.
  function draw(id, series, data, extra) {
    const fig = $(id);
    const el = fig.querySelector(".plot");
    const key = JSON.stringify(series.map((s) => [s.label, s.scale || "y"]));
    const width = Math.max(300, el.clientWidth);
    let c = charts[id];
    if (c && c.key !== key) { c.plot.destroy(); c = null; }
    if (!c) {
      const opts = Object.assign({
        width, height: 240,
        scales: { x: { time: true } },
        series: [{}].concat(series.map((s, i) => Object.assign({
          stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
        }, s))),
        legend: { live: false },
      }, extra || {});
      c = charts[id] = { key, plot: new uPlot(opts, data, el) };
    } else {
      c.plot.setData(data);
      if (Math.abs(c.plot.width - width) > 4) c.plot.setSize({ width, height: 240 });
    }
    fig.dataset.points = String(countPoints(data));
  }

  function renderCharts(s) {
    const pts = s.points;
    const xs = pts.map((p) => p.t / 1000);
    const perSecond = (p, n) => (p.ms > 0 ? (1000 * n) / p.ms : 0);

    const totals = {};
    for (const p of pts) for (const [k, v] of Object.entries(p.decisions)) totals[k] = (totals[k] || 0) + v;
    const labels = Object.keys(totals).sort((a, b) => totals[b] - totals[a] || a.localeCompare(b));
    draw("chart-decisions",
      labels.map((l) => ({ label: l, value: (u, v) => fixed(v, 2) })),
      [xs].concat(labels.map((l) => pts.map((p) => perSecond(p, p.decisions[l] || 0)))));

    draw("chart-relay",
      [{ label: "p50" }, { label: "p99" }],
      [xs, pts.map((p) => p.relay_p50_ms), pts.map((p) => p.relay_p99_ms)]);

    draw("chart-speculation",
      [{ label: "tokens / round trip" },
        { label: "acceptance %", scale: "pct" }],
      [xs, pts.map((p) => p.tokens_per_round_trip),
        pts.map((p) => (p.acceptance === null ? null : 100 * p.acceptance))],
      {
        scales: { x: { time: true }, pct: { range: [0, 100] } },
        axes: [{}, { label: "tokens" }, { side: 1, scale: "pct", label: "%", grid: { show: false } }],
      });

    draw("chart-load",
      [{ label: "split sessions" }, { label: "devices" }, { label: "healthy workers" }],
      [xs, pts.map((p) => p.sessions), pts.map((p) => p.connections), pts.map((p) => p.workers_healthy)]);
  }

  // --- tiles and tables ---------------------------------------------------------------------
  function renderTiles(s) {
    const pts = s.points;
    let ms = 0, n = 0;
    for (let i = pts.length - 1; i >= 0 && ms < 60000; i--) {
      ms += pts[i].ms;
      for (const v of Object.values(pts[i].decisions)) n += v;
    }
    $("t-decisions").textContent = ms > 0 ? ((60000 * n) / ms).toFixed(1) : "–";
    const lastRelay = [...pts].reverse().find((p) => p.relay_p50_ms !== null);
    $("t-relay").textContent = lastRelay
      ? fixed(lastRelay.relay_p50_ms, 2) + " / " + fixed(lastRelay.relay_p99_ms, 2) + " ms" : "–";
    const t = s.totals || {};
    $("t-tokens").textContent = fixed(t.tokens_per_round_trip, 2);
    $("t-acceptance").textContent = pct(t.acceptance);
    $("t-sessions").textContent = String(s.sessions);
    const healthy = s.workers.filter((w) => w.healthy && !w.draining).length;
    $("t-workers").textContent = healthy + " / " + s.workers.length;
    $("t-policy").textContent = "v" + s.policy.version;
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function renderWorkers(s) {
    const body = $("workers").querySelector("tbody");
    body.replaceChildren();
    for (const w of s.workers) {
      const tr = document.createElement("tr");
      tr.dataset.worker = w.address;
      const state = w.draining ? "draining" : w.healthy ? "healthy" : "unhealthy";
      tr.dataset.state = state;
      cell(tr, w.address);
      if (w.package) {
        const pkg = document.createElement("span");
        pkg.className = "package";
        pkg.textContent = w.package;
        tr.lastChild.appendChild(pkg);
      }
      cell(tr, state, "state-" + state);
      cell(tr, String(w.sessions));
      cell(tr, w.kv_budget_bytes ? bytes(w.kv_bytes) + " / " + bytes(w.kv_budget_bytes) : "–");
      cell(tr, String(w.in_flight_steps));
      cell(tr, ago(w.last_seen_unix_ms, s.now_unix_ms));
      cell(tr, w.last_error || "", w.last_error ? "error" : "");
      body.appendChild(tr);
    }
  }

  function renderPolicy(s) {
    const p = s.policy;
    $("policy-version").textContent = "v" + p.version;
    const loaded = new Date(p.loaded_unix_ms).toLocaleString();
    $("policy-meta").textContent = p.previous
      ? "from " + p.source + ", in force since " + loaded + " (" + p.digest.slice(0, 19) +
        "…); changes from v" + p.previous.version + ":"
      : "from " + p.source + ", in force since " + loaded + " (" + p.digest.slice(0, 19) +
        "…); unchanged since the gateway started";
    const pre = $("policy-diff");
    pre.replaceChildren();
    pre.hidden = p.diff.length === 0;
    const classes = { "+": "add", "-": "del", " ": "ctx", "…": "gap" };
    for (const line of p.diff) {
      const span = document.createElement("span");
      span.className = classes[line.op] || "ctx";
      span.textContent = line.op + " " + line.text;
      pre.appendChild(span);
    }
    pre.dataset.lines = String(p.diff.length);
  }

  function render(s) {
    renderTiles(s);
    renderCharts(s);
    renderWorkers(s);
    renderPolicy(s);
  }

  // --- start --------------------------------------------------------------------------------
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    poll();
  });
  window.addEventListener("resize", () => { for (const c of Object.values(charts)) c.key = ""; });

  token = takeTokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    poll();
  } else {
    setStatus("unauthorized", "not signed in");
    showLogin("");
  }
})();
