/**
 * The demo page's product table, kept live: each change event updates, inserts or
 * removes a row, and the cells it changed flash briefly.
 *
 * @module products
 */

/** Fields the table shows, as named in the event's `data` and the cells' `data-field`. */
const FIELDS = ["name", "sku", "price", "stock", "updated_at"];
const NUMERIC = new Set(["price", "stock"]);
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/**
 * Keep `table` in step with the changes of the model named by its `data-model`.
 *
 * @param {HTMLTableElement} table  Rows are `<tr data-pk>`, cells `<td data-field>`.
 * @param {import("../../broadcast_app/js/broadcast.js").Client} client
 * @param {{empty?: HTMLElement, lastChange?: HTMLElement}} [elements]  Shown when the
 *   table is empty; where the latest change is described.
 * @returns {() => void}  Stops following changes.
 */
export function mountProductTable(table, client, { empty, lastChange } = {}) {
  const body = table.tBodies[0];
  for (const time of body.querySelectorAll("time")) time.textContent = formatTime(time.dateTime);

  return client.subscribe(table.dataset.model, {
    onChange(event) {
      if (event.op === "deleted") removeRow(body, event.pk);
      else upsertRow(body, event);
      if (empty) empty.hidden = body.querySelector("tr[data-pk]") !== null;
      if (lastChange) {
        lastChange.hidden = false;
        lastChange.textContent =
          `Last change: #${event.pk} ${event.op} at ${formatTime(event.ts)}, ` +
          `published by ${event.origin}.`;
      }
    },
  });
}

function findRow(body, pk) {
  return body.querySelector(`tr[data-pk="${CSS.escape(String(pk))}"]`);
}

function upsertRow(body, event) {
  let row = findRow(body, event.pk);
  const created = row === null;
  if (created) row = insertRow(body, event.pk);
  const flashed = created ? FIELDS : (event.changed ?? []);
  const data = event.data ?? {};
  for (const field of FIELDS) {
    if (!(field in data)) continue;
    const cell = row.querySelector(`td[data-field="${field}"]`);
    fillCell(cell, field, data[field]);
    if (flashed.includes(field)) flash(cell);
  }
}

function insertRow(body, pk) {
  const row = document.createElement("tr");
  row.dataset.pk = pk;
  for (const field of FIELDS) {
    const cell = row.insertCell();
    cell.dataset.field = field;
    if (NUMERIC.has(field)) cell.className = "num";
  }
  // The page lists products by pk; a new one goes where a reload would put it.
  const next = [...body.querySelectorAll("tr[data-pk]")].find(
    (other) => comparePks(other.dataset.pk, pk) > 0,
  );
  body.insertBefore(row, next ?? null);
  return row;
}

function removeRow(body, pk) {
  const row = findRow(body, pk);
  if (row === null) return;
  // Forget its pk now so that a quick re-creation gets a fresh row.
  delete row.dataset.pk;
  row.classList.add("removing");
  setTimeout(() => row.remove(), 400);
}

function fillCell(cell, field, value) {
  if (field === "updated_at" && value) {
    const time = document.createElement("time");
    time.dateTime = value;
    time.textContent = formatTime(value);
    cell.replaceChildren(time);
  } else {
    cell.textContent = value ?? "";
  }
}

function flash(cell) {
  cell.classList.remove("flash");
  void cell.offsetWidth; // restart the animation when a cell changes again quickly
  cell.classList.add("flash");
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : timeFormat.format(date);
}

function comparePks(a, b) {
  const [x, y] = [Number(a), Number(b)];
  if (Number.isInteger(x) && Number.isInteger(y)) return x - y;
  return String(a).localeCompare(String(b));
}
