/**
 * The browser side of the `{% load broadcast %}` template tags: finds the elements the
 * tags rendered (`data-broadcast-*` attributes) and keeps them current over one shared
 * connection. `page.js` calls {@link bindPage} for the whole page; `admin.js` and your
 * own modules may reuse the helpers exported here.
 *
 * Values are rendered the way the tags render them on the server (`broadcast.py`'s
 * `render_value`): `null` as nothing, booleans as Yes/No, dates and datetimes as
 * `<time>` elements shown in the browser's locale, anything else as text.
 *
 * @module live
 */

import { connect } from "./broadcast.js";

/** Above this many objects of one model, a page subscribes to the whole model. */
const MAX_OBJECT_SUBSCRIPTIONS = 20;
const FLASH = "broadcast-flash";
const REMOVE_AFTER_MS = 600;
/** What a status badge says for each status (its `data-status` keeps the status). */
const STATUS_LABELS = {
  connecting: "connecting…",
  open: "live",
  reconnecting: "reconnecting…",
  closed: "offline",
};

const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "medium",
});
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

let sharedClient = null;

/**
 * The page's one connection, opened on first use.
 *
 * @returns {import("./broadcast.js").Client}
 */
export function pageClient() {
  sharedClient ??= connect();
  return sharedClient;
}

/**
 * Highlight an element briefly (again, if it is still highlighted).
 *
 * @param {Element} element
 */
export function flash(element) {
  element.classList.remove(FLASH);
  void element.offsetWidth; // restart the animation when the element changes again quickly
  element.classList.add(FLASH);
}

/**
 * Show a broadcast value in an element, as the template tags render it.
 *
 * @param {HTMLElement} element
 * @param {*} value  A value from an event's `data`.
 * @param {string} [kind]  `datetime`, `date`, `bool`, `number` or `text`.
 */
export function renderValue(element, value, kind = "text") {
  if (value === null || value === undefined) {
    element.replaceChildren();
  } else if (kind === "bool") {
    element.textContent = value ? "Yes" : "No";
  } else if ((kind === "datetime" || kind === "date") && typeof value === "string") {
    const time = document.createElement("time");
    time.dateTime = value;
    formatTime(time, kind);
    element.replaceChildren(time);
  } else {
    element.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
  }
}

/**
 * Show every `<time datetime>` under `root` in the browser's locale and time zone.
 *
 * @param {ParentNode} root
 */
export function formatTimes(root) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    const kind = time.closest("[data-broadcast-kind]")?.dataset.broadcastKind;
    formatTime(time, kind === "date" ? "date" : "datetime");
  }
}

function formatTime(time, kind) {
  // A date alone is a calendar day, not midnight UTC.
  const date = new Date(kind === "date" ? `${time.dateTime}T00:00:00` : time.dateTime);
  if (Number.isNaN(date.getTime())) return;
  time.textContent = (kind === "date" ? dateFormat : dateTimeFormat).format(date);
  time.title = time.dateTime;
}

/**
 * Keep every `[data-broadcast-status]` element showing the connection's status: its
 * `data-status` (which live.css colours) and a label (`live` for `open`, and so on).
 *
 * @param {ParentNode} [root]
 */
export function bindStatusBadges(root = document) {
  const show = (status) => {
    for (const badge of root.querySelectorAll("[data-broadcast-status]")) {
      badge.dataset.status = status;
      badge.textContent = STATUS_LABELS[status] ?? status;
    }
  };
  document.addEventListener("broadcast:status", (event) => show(event.detail));
  if (sharedClient?.status) show(sharedClient.status);
}

/**
 * Call `callback` each time the connection opens again after it was lost (what was
 * missed meanwhile may need fetching).
 *
 * @param {() => void} callback
 */
export function onReconnect(callback) {
  let previous = null;
  document.addEventListener("broadcast:status", (event) => {
    if (event.detail === "open" && previous === "reconnecting") callback();
    previous = event.detail;
  });
}

/**
 * Fetch this page again and parse it (to catch up with what a reconnection missed).
 *
 * @param {string} [url]
 * @returns {Promise<Document | null>}  `null` when the page is gone or the session is.
 */
export async function fetchPage(url = location.href) {
  try {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    // A redirect means a login page: showing that in place of rows would be worse.
    if (!response.ok || response.redirected) return null;
    return new DOMParser().parseFromString(await response.text(), "text/html");
  } catch {
    return null;
  }
}

/**
 * A `{% live_table %}`: rows keyed by `data-broadcast-pk`, cells by `data-broadcast-field`.
 * A table of a filtered queryset carries its filter (`data-broadcast-where`, JSON) and
 * subscribes with it: rows that enter the filter appear, rows that leave it go.
 */
class LiveTable {
  constructor(wrapper) {
    this.wrapper = wrapper;
    this.model = wrapper.dataset.broadcastModel;
    this.where = wrapper.dataset.broadcastWhere ? JSON.parse(wrapper.dataset.broadcastWhere) : null;
    this.order = wrapper.dataset.broadcastOrder || "bottom";
    this.body = wrapper.querySelector("tbody");
    this.template = wrapper.querySelector("template[data-broadcast-row]");
    this.empty = wrapper.querySelector("[data-broadcast-empty]");
  }

  row(pk) {
    return this.body.querySelector(`tr[data-broadcast-pk="${CSS.escape(String(pk))}"]`);
  }

  apply(event) {
    // (A replayed `leave` of a row not shown, or `enter` of one shown, is harmless.)
    if (event.op === "deleted" || event.match === "leave") this.remove(event.pk);
    else this.upsert(event);
    this.updateEmpty();
  }

  upsert(event) {
    let row = this.row(event.pk);
    const created = row === null;
    if (created) row = this.insert(String(event.pk));
    const data = event.data ?? {};
    const changed = event.changed ?? [];
    for (const cell of row.querySelectorAll("td[data-broadcast-field]")) {
      const name = cell.dataset.broadcastField;
      if (!(name in data)) continue;
      renderValue(cell, data[name], cell.dataset.broadcastKind);
      if (created || changed.includes(name)) flash(cell);
    }
  }

  insert(pk) {
    const row = this.template.content.firstElementChild.cloneNode(true);
    row.dataset.broadcastPk = pk;
    const rows = [...this.body.querySelectorAll("tr[data-broadcast-pk]")];
    let before = null;
    if (this.order === "top") before = rows[0] ?? null;
    else if (this.order === "pk") before = rows.find((r) => comparePks(r.dataset.broadcastPk, pk) > 0);
    else if (this.order === "-pk") before = rows.find((r) => comparePks(r.dataset.broadcastPk, pk) < 0);
    this.body.insertBefore(row, before ?? null);
    return row;
  }

  remove(pk) {
    const row = this.row(pk);
    if (row === null) return;
    // Forget its pk at once, so that a quick re-creation gets a fresh row.
    delete row.dataset.broadcastPk;
    row.classList.add("broadcast-removing");
    setTimeout(() => row.remove(), REMOVE_AFTER_MS);
  }

  updateEmpty() {
    if (this.empty) this.empty.hidden = this.body.querySelector("tr[data-broadcast-pk]") !== null;
  }

  /** Bring the rows in line with the same table in a freshly fetched page. */
  sync(fresh) {
    const freshBody = fresh.querySelector("tbody");
    if (!freshBody) return;
    const keep = new Set();
    for (const freshRow of freshBody.querySelectorAll("tr[data-broadcast-pk]")) {
      const pk = freshRow.dataset.broadcastPk;
      keep.add(pk);
      let row = this.row(pk);
      if (row === null) {
        row = document.importNode(freshRow, true);
        formatTimes(row);
        row.querySelectorAll("td").forEach(flash);
      } else {
        syncCells(row, freshRow);
      }
      this.body.append(row); // the server's order is the truth after a gap
    }
    for (const row of this.body.querySelectorAll("tr[data-broadcast-pk]")) {
      if (!keep.has(row.dataset.broadcastPk)) this.remove(row.dataset.broadcastPk);
    }
    this.updateEmpty();
  }
}

function syncCells(row, freshRow) {
  for (const cell of row.querySelectorAll("td[data-broadcast-field]")) {
    const name = cell.dataset.broadcastField;
    const freshCell = freshRow.querySelector(`td[data-broadcast-field="${CSS.escape(name)}"]`);
    if (freshCell && cellValue(freshCell) !== cellValue(cell)) {
      cell.replaceChildren(...document.importNode(freshCell, true).childNodes);
      formatTimes(cell);
      flash(cell);
    }
  }
}

/** What a cell shows, ignoring how its times are formatted (server and browser differ). */
function cellValue(cell) {
  const time = cell.querySelector("time[datetime]");
  return time ? time.dateTime : cell.textContent.trim();
}

function applyField(element, event) {
  if (element.dataset.broadcastPk !== String(event.pk)) return;
  if (event.op === "deleted") {
    element.dataset.broadcastDeleted = "";
    element.title = "Deleted";
    return;
  }
  delete element.dataset.broadcastDeleted;
  const name = element.dataset.broadcastField;
  if (!(name in (event.data ?? {}))) return;
  renderValue(element, event.data[name], element.dataset.broadcastKind);
  if (event.op === "created" || (event.changed ?? []).includes(name)) flash(element);
}

function comparePks(a, b) {
  const [x, y] = [Number(a), Number(b)];
  if (Number.isInteger(x) && Number.isInteger(y)) return x - y;
  return String(a).localeCompare(String(b));
}

/**
 * Bind every live tag under `root`: `{% live_table %}`, `{% live_field %}` and
 * `{% broadcast_status %}`. One subscription per model with a table (or with many
 * objects shown), else one per object.
 *
 * @param {ParentNode} [root]
 */
export function bindPage(root = document) {
  bindStatusBadges(root);
  const tables = [...root.querySelectorAll("[data-broadcast-table]")].map((w) => new LiveTable(w));
  const fields = [
    ...root.querySelectorAll("[data-broadcast-model][data-broadcast-pk][data-broadcast-field]"),
  ];
  for (const element of [...tables.map((t) => t.wrapper), ...fields]) formatTimes(element);
  const followed = tables.filter((t) => t.where === null);
  const models = new Set([...followed.map((t) => t.model), ...fields.map(modelOf)]);
  if (models.size === 0 && tables.length === 0) return;

  const client = pageClient();
  for (const table of tables.filter((t) => t.where !== null)) {
    client.subscribe(table.model, {
      where: table.where,
      since: table.wrapper.dataset.broadcastSince || undefined,
      onChange: (event) => table.apply(event),
      onReset: () => resync(root, [table], []),
    });
  }
  for (const model of models) {
    const modelTables = tables.filter((table) => table.model === model && table.where === null);
    const modelFields = fields.filter((field) => modelOf(field) === model);
    const onChange = (event) => {
      for (const table of modelTables) table.apply(event);
      for (const field of modelFields) applyField(field, event);
    };
    const onReset = () => resync(root, modelTables, modelFields);
    const since = [...modelTables.map((t) => t.wrapper), ...modelFields]
      .map((element) => element.dataset.broadcastSince)
      .find(Boolean);
    const pks = new Set(modelFields.map((field) => field.dataset.broadcastPk));
    if (modelTables.length > 0 || pks.size > MAX_OBJECT_SUBSCRIPTIONS) {
      client.subscribe(model, { since, onChange, onReset });
    } else {
      for (const pk of pks) client.subscribe(model, { pk, since, onChange, onReset });
    }
  }
  // Until the server replays what a reconnection missed, fetch the page and compare.
  onReconnect(() => resync(root, tables, fields));
}

function modelOf(element) {
  return element.dataset.broadcastModel;
}

let resyncing = null;

async function resync(root, tables, fields) {
  if (resyncing) return resyncing;
  resyncing = (async () => {
    const fresh = await fetchPage();
    if (fresh === null) return;
    const freshTables = [...fresh.querySelectorAll("[data-broadcast-table]")];
    const allTables = [...root.querySelectorAll("[data-broadcast-table]")];
    for (const table of tables) {
      // Tables are matched by their position among the page's live tables.
      const match = freshTables[allTables.indexOf(table.wrapper)];
      if (match && match.dataset.broadcastModel === table.model) table.sync(match);
    }
    for (const field of fields) {
      const { broadcastModel: model, broadcastPk: pk, broadcastField: name } = field.dataset;
      const match = fresh.querySelector(
        `[data-broadcast-model="${CSS.escape(model)}"][data-broadcast-pk="${CSS.escape(pk)}"]` +
          `[data-broadcast-field="${CSS.escape(name)}"]`,
      );
      if (match && cellValue(match) !== cellValue(field)) {
        field.replaceChildren(...document.importNode(match, true).childNodes);
        formatTimes(field);
        flash(field);
      }
    }
  })().finally(() => {
    resyncing = null;
  });
  return resyncing;
}
