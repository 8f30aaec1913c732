/**
 * The staff dashboard: fills `dashboard.html` from `status.json` and refreshes it.
 *
 * It polls rather than listening on the websocket: what it shows — heartbeats, counters,
 * Redis INFO — are periodic figures, not model events, so the websocket (which carries
 * model events to users allowed to see that model) has nothing to push. Polling a
 * staff-only endpoint every couple of seconds is cheap, and the page keeps working when
 * the websocket path is what is broken, which is when a dashboard is needed most.
 *
 * Everything is written with `textContent`: no figure is ever parsed as HTML.
 *
 * @module dashboard
 */

const root = document.querySelector(".bd[data-status-url]");
if (root) start(root);

function start(root) {
  const url = root.dataset.statusUrl;
  const refresh = Number(root.dataset.refreshMs) || 2000;
  const state = document.querySelector("[data-dashboard-state]");
  let timer = null;

  async function poll() {
    clearTimeout(timer);
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 403) {
        setState(state, "closed", "signed out");
        return; // no point asking again until the user signs in
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(root, await response.json());
      setState(state, "open", "live");
    } catch {
      setState(state, "reconnecting", "retrying");
    }
    // A hidden tab needs no fresh figures; it catches up when shown again.
    timer = setTimeout(poll, document.hidden ? refresh * 10 : refresh);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  poll();
}

function setState(badge, status, text) {
  if (!badge) return;
  badge.dataset.status = status;
  badge.textContent = text;
}

function render(root, status) {
  const part = (name) => root.querySelector(`[data-dashboard="${name}"]`);
  renderSummary(part("summary"), status);
  renderInstances(part("instances"), status.instances);
  renderChart(part("chart"), part("peak"), status.rate);
  renderRedis(part("redis"), status.redis);
  renderFeed(part("feed"), part("feed-empty"), status.feed);
  renderModels(part("models"), status.models);
}

function renderSummary(element, status) {
  const rate = status.rate.per_second;
  const now = rate.length ? rate[rate.length - 1] : 0;
  const redis = status.redis.ok ? `Redis ${status.redis.version}` : "Redis unreachable";
  const count = status.instances.length;
  element.textContent =
    `${count} live instance${count === 1 ? "" : "s"} · ${formatNumber(now)} events/s · ` +
    `${redis} · served by ${status.instance.id} at ${formatClock(status.generated_at)}`;
}

function renderInstances(table, instances) {
  const rows = instances.map((instance) => {
    const row = document.createElement("tr");
    row.dataset.instance = instance.id;
    if (instance.self) row.classList.add("bd-self");
    const name = cell(instance.id);
    if (instance.self) name.append(tag("this page"));
    if (!instance.listening) name.append(tag("not listening", "bd-bad"));
    row.append(
      name,
      cell(`${instance.host} · ${instance.pid}`),
      // From the start time: a peer's uptime_s is as old as its last heartbeat.
      cell(formatDuration((Date.now() - Date.parse(instance.started_at)) / 1000), "bd-num"),
      cell(formatNumber(instance.connections), "bd-num"),
      cell(formatNumber(instance.published), "bd-num", "published"),
      cell(formatNumber(instance.received), "bd-num", "received"),
      cell(instance.cache_entries ?? "—", "bd-num"),
      cell(instance.last_lag_ms === null ? "—" : `${formatNumber(instance.last_lag_ms)} ms`, "bd-num"),
      cell(instance.self ? "now" : `${ageSeconds(instance.reported_at)} s ago`, "bd-num"),
    );
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
}

function renderChart(svg, peakLabel, rate) {
  const values = rate.per_second;
  const peak = Math.max(1, ...values);
  const width = 600 / Math.max(1, values.length);
  const ns = "http://www.w3.org/2000/svg";
  const bars = values.map((value, index) => {
    const height = (value / peak) * 150;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("class", "bd-bar");
    bar.setAttribute("x", String(index * width + 1));
    bar.setAttribute("y", String(160 - height));
    bar.setAttribute("width", String(Math.max(1, width - 2)));
    bar.setAttribute("height", String(Math.max(value > 0 ? 1 : 0, height)));
    const title = document.createElementNS(ns, "title");
    const ago = (values.length - index) * rate.step_s;
    title.textContent = `${formatNumber(value)} events/s, ${ago} s ago`;
    bar.append(title);
    return bar;
  });
  const baseline = document.createElementNS(ns, "line");
  baseline.setAttribute("class", "bd-baseline");
  baseline.setAttribute("x1", "0");
  baseline.setAttribute("x2", "600");
  baseline.setAttribute("y1", "159.5");
  baseline.setAttribute("y2", "159.5");
  svg.replaceChildren(baseline, ...bars);
  peakLabel.textContent = `peak ${formatNumber(Math.max(0, ...values))}/s`;
}

function renderRedis(list, redis) {
  const facts = redis.ok
    ? [
        ["Status", "reachable"],
        ["Version", redis.version],
        ["Memory used", redis.used_memory_human],
        ["Clients", formatNumber(redis.connected_clients)],
        ["Pub/sub channels", formatNumber(redis.pubsub_channels)],
        ["Uptime", formatDuration(redis.uptime_s)],
      ]
    : [["Status", `unreachable: ${redis.error}`]];
  const items = facts.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value ?? "—";
    if (!redis.ok) dd.classList.add("bd-bad");
    return [dt, dd];
  });
  list.replaceChildren(...items);
}

function renderFeed(table, empty, feed) {
  const rows = feed.map((receipt) => {
    const row = document.createElement("tr");
    row.dataset.event = receipt.id;
    row.append(
      cell(formatClock(receipt.received_at)),
      cell(receipt.model),
      cell(receipt.pk),
      cell(receipt.op, `bd-op bd-op-${receipt.op}`),
      cell(receipt.changed.join(", ") || "—"),
      // Events carry an opaque origin; status.json names its instance when it is live.
      cell(receipt.origin_instance ?? receipt.origin),
      cell(receipt.lag_ms === null ? "—" : `${formatNumber(receipt.lag_ms)} ms`, "bd-num"),
    );
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
  empty.hidden = rows.length > 0;
}

function renderModels(table, models) {
  const rows = models.map((model) => {
    const row = document.createElement("tr");
    row.append(
      cell(model.label),
      cell(model.fields.join(", ")),
      cell(model.permission),
      cell(model.serializer ?? "default"),
      cell(model.object_check ?? "—"),
      cell(model.last_id ?? "—"),
      // Connections present on its objects (presence), over every live instance.
      cell(model.present ?? 0, "", "present"),
    );
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
}

function cell(text, className, name) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (className) td.className = className;
  if (name) td.dataset.figure = name;
  return td;
}

function tag(text, className = "") {
  const span = document.createElement("span");
  span.className = `bd-tag ${className}`.trim();
  span.textContent = text;
  return span;
}

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

function formatNumber(value) {
  return value === null || value === undefined ? "—" : numberFormat.format(value);
}

function formatClock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : clockFormat.format(date);
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function ageSeconds(iso) {
  return Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
}
