/**
 * The live Django admin (`broadcast_app.admin.LiveAdminMixin` adds this module to the
 * changelist and the change form of an admin class, with `data-*` attributes on its
 * `<script>` tag naming the model and, on the change form, the object).
 *
 * Changelist: each change of the model makes the page fetch itself again — same URL,
 * so same filters, search, ordering and page — and merge the fresh rows into the table:
 * changed cells are replaced and highlighted, new rows inserted, rows that left the
 * list marked (deleted, or no longer matching). Rows are rendered by the admin itself,
 * so every column (callables, links, booleans, even non-broadcast fields the user may
 * see) is exactly what a reload would show, and action checkboxes keep their state.
 * When the changelist's filters translate into a `where` (`data-where`, set by the
 * mixin), the page subscribes with it: only changes of rows in the filter (or entering
 * or leaving it) cost a fetch, and a row that leaves the filter is marked as such
 * ("no longer matches the filters"), not removed under the user's cursor.
 *
 * Change form: a change or deletion of the object elsewhere shows a banner (reload /
 * see what changed); saving over it needs one more, explicit click. Whoever else has
 * the same object's change form open is named above the form ("Ann is also editing"),
 * through presence, before anyone saves.
 *
 * @module admin
 */

import {
  bindStatusBadges,
  fetchPage,
  flash,
  onReconnect,
  pageClient,
} from "./live.js";

/** The label of a row that left the list, by why (its `data-broadcast-gone`). */
const GONE_LABELS = {
  deleted: "deleted",
  left: "no longer matches the filters",
  moved: "no longer in this list",
};

/** Events arriving within this many milliseconds cost one fetch of the page. */
const REFRESH_DELAY_MS = 150;

function start(options) {
  addStatusBadge();
  if (options.broadcastAdmin === "changelist") new LiveChangelist(options).start();
  else if (options.broadcastAdmin === "change" && options.pk) new ConflictWatch(options).start();
}

function addStatusBadge() {
  const title = document.querySelector("#content h1");
  if (!title) return;
  const badge = document.createElement("span");
  badge.className = "broadcast-status";
  badge.dataset.broadcastStatus = "";
  badge.dataset.status = "connecting";
  badge.setAttribute("role", "status");
  badge.textContent = "connecting…";
  title.append(" ", badge);
  bindStatusBadges(title);
}

/** An admin row's object pk: its action checkbox's value, else its change link's. */
function rowKey(row) {
  const checkbox = row.querySelector("input.action-select");
  if (checkbox) return checkbox.value;
  const link = row.querySelector("th a[href], td a[href]");
  const match = link && /\/([^/]+)\/change\/(?:\?.*)?$/.exec(link.getAttribute("href"));
  return match ? adminUnquote(decodeURIComponent(match[1])) : null;
}

/** Undo `django.contrib.admin.utils.quote` (`_2F` for `/`, and so on). */
function adminUnquote(text) {
  return text.replace(/_([0-9A-F]{2})/g, (_, hex) => String.fromCharCode(parseInt(hex, 16)));
}

class LiveChangelist {
  constructor({ model, since, where }) {
    this.model = model;
    this.since = since;
    this.where = where ? JSON.parse(where) : null;
    /** pks whose latest event left the filter */
    this.left = new Set();
    /** pk → op of the events not merged yet */
    this.pending = new Map();
    /** pks the page saw deleted: their rows stay marked as such */
    this.deleted = new Set();
    this.timer = null;
    this.busy = false;
    this.again = false;
  }

  start() {
    if (!document.getElementById("changelist")) return;
    pageClient().subscribe(this.model, {
      since: this.since,
      ...(this.where ? { where: this.where } : {}),
      onChange: (event) => {
        this.pending.set(String(event.pk), event.match === "leave" ? "leave" : event.op);
        this.schedule();
      },
      onReset: () => this.schedule(),
    });
    onReconnect(() => this.schedule());
    this.keepActionsWorking();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), REFRESH_DELAY_MS);
  }

  async refresh() {
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    const events = this.pending;
    this.pending = new Map();
    for (const [pk, op] of events) {
      if (op === "deleted") this.deleted.add(pk);
      if (op === "leave") this.left.add(pk);
      else this.left.delete(pk);
    }
    try {
      const fresh = await fetchPage();
      if (fresh !== null) this.merge(fresh, events);
    } finally {
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.schedule();
      }
    }
  }

  merge(fresh, events) {
    const table = document.getElementById("result_list");
    const freshTable = fresh.getElementById("result_list");
    if (document.querySelector('#changelist-form input[name="form-TOTAL_FORMS"]')) {
      // list_editable: replacing rows would drop what the user is typing and break the
      // formset's numbering; mark the rows instead.
      this.markStale(table, events);
      return;
    }
    if (!table || !freshTable) {
      // The list was or became empty: nothing to preserve, take the fresh one whole.
      // (Select-all then covers the original rows only, until a reload.)
      const current = document.getElementById("changelist");
      const replacement = fresh.getElementById("changelist");
      if (current && replacement) current.replaceWith(document.importNode(replacement, true));
      return;
    }
    this.mergeRows(table.tBodies[0], freshTable.tBodies[0]);
    this.mergeTotals(fresh);
  }

  mergeRows(body, freshBody) {
    const before = [...body.rows];
    const current = new Map();
    for (const row of before) {
      const key = rowKey(row);
      if (key !== null) current.set(key, row);
    }
    const kept = new Set();
    for (const freshRow of [...freshBody.rows]) {
      const key = rowKey(freshRow);
      if (key === null) continue;
      kept.add(key);
      let row = current.get(key);
      if (row) {
        updateCells(row, freshRow);
        unmark(row);
      } else {
        row = document.importNode(freshRow, true);
        row.classList.add("broadcast-new");
        flash(row);
      }
      body.append(row); // in the order the admin lists them now
    }
    // Rows that left this page stay where they were, marked, until a reload.
    before.forEach((row, index) => {
      const key = rowKey(row);
      if (key === null || kept.has(key)) return;
      const reason = this.deleted.has(key) ? "deleted" : this.left.has(key) ? "left" : "moved";
      markGone(row, reason);
      const previous = before[index - 1];
      if (previous) previous.after(row);
      else body.prepend(row);
    });
    this.updateCounter();
  }

  mergeTotals(fresh) {
    const paginator = document.querySelector("#changelist-form .paginator");
    const freshPaginator = fresh.querySelector("#changelist-form .paginator");
    if (paginator && freshPaginator && paginator.innerHTML !== freshPaginator.innerHTML) {
      paginator.replaceChildren(...document.importNode(freshPaginator, true).childNodes);
    }
    const counter = document.querySelector("span.action-counter");
    const freshCounter = fresh.querySelector("span.action-counter");
    if (counter && freshCounter) {
      counter.dataset.actionsIcnt = freshCounter.dataset.actionsIcnt;
      this.updateCounter();
    }
  }

  markStale(table, events) {
    if (!table) return;
    for (const row of table.tBodies[0].rows) {
      const key = rowKey(row);
      if (key !== null && events.has(key)) {
        if (events.get(key) === "deleted") markGone(row, "deleted");
        else if (events.get(key) === "leave") markGone(row, "left");
        else row.classList.add("broadcast-stale");
      }
    }
    if (!document.querySelector(".broadcast-stale-note")) {
      const note = document.createElement("p");
      note.className = "broadcast-stale-note";
      note.textContent = "Rows marked here were changed elsewhere. ";
      const reload = document.createElement("a");
      reload.href = location.href;
      reload.textContent = "Reload to see them";
      note.append(reload, " (rows being edited in place are not refreshed).");
      table.before(note);
    }
  }

  /**
   * Django's actions.js counts and toggles the checkboxes that existed when the page
   * loaded; keep "select all" and the "N of M selected" counter right for new rows.
   */
  keepActionsWorking() {
    const toggle = document.getElementById("action-toggle");
    toggle?.addEventListener("click", () => {
      for (const box of document.querySelectorAll("tr.broadcast-new input.action-select")) {
        if (box.disabled) continue;
        box.checked = toggle.checked;
        box.closest("tr").classList.toggle("selected", toggle.checked);
      }
      this.updateCounter();
    });
    document.getElementById("result_list")?.addEventListener("change", (event) => {
      if (event.target.classList?.contains("action-select")) this.updateCounter();
    });
  }

  updateCounter() {
    const counter = document.querySelector("span.action-counter");
    if (!counter) return;
    const boxes = [...document.querySelectorAll("#result_list input.action-select")];
    const selected = boxes.filter((box) => box.checked && !box.disabled).length;
    const total = counter.dataset.actionsIcnt;
    const text = "%(sel)s of %(cnt)s selected";
    counter.textContent =
      typeof interpolate === "function" && typeof ngettext === "function"
        ? interpolate(ngettext(text, text, selected), { sel: selected, cnt: total }, true)
        : `${selected} of ${total} selected`;
  }
}

function updateCells(row, freshRow) {
  const cells = [...row.cells];
  const freshCells = [...freshRow.cells];
  cells.forEach((cell, index) => {
    const freshCell = freshCells[index];
    // The checkbox cell holds the user's selection: never replace it.
    if (!freshCell || cell.classList.contains("action-checkbox")) return;
    if (cell.innerHTML !== freshCell.innerHTML) {
      cell.replaceChildren(...document.importNode(freshCell, true).childNodes);
      flash(cell);
    }
  });
}

function markGone(row, reason) {
  row.classList.add("broadcast-gone");
  row.classList.remove("selected");
  row.dataset.broadcastGone = reason;
  const box = row.querySelector("input.action-select");
  if (box) {
    // A row that is not in the list any more must not be acted upon.
    box.checked = false;
    box.disabled = true;
  }
  let tag = row.querySelector(".broadcast-tag");
  if (!tag) {
    tag = document.createElement("span");
    tag.className = "broadcast-tag";
    const cell = [...row.cells].find((c) => !c.classList.contains("action-checkbox"));
    cell?.append(" ", tag);
  }
  tag.textContent = GONE_LABELS[reason] ?? GONE_LABELS.moved;
}

function unmark(row) {
  if (!row.classList.contains("broadcast-gone")) return;
  row.classList.remove("broadcast-gone");
  delete row.dataset.broadcastGone;
  row.querySelector(".broadcast-tag")?.remove();
  const box = row.querySelector("input.action-select");
  if (box) box.disabled = false;
}

/** The change form's guard against silently overwriting someone else's change. */
class ConflictWatch {
  constructor({ model, pk, since, verboseName, changelistUrl, userId }) {
    this.model = model;
    this.pk = pk;
    this.userId = userId;
    this.others = null;
    this.since = since;
    this.name = verboseName || "object";
    this.changelistUrl = changelistUrl;
    this.changed = new Set();
    this.latest = null;
    this.deleted = null;
    this.acknowledged = false;
    this.saving = false;
    this.missed = false;
    this.banner = null;
  }

  start() {
    const modelName = this.model.split(".")[1];
    this.form = document.getElementById(`${modelName}_form`);
    if (!this.form) return;
    this.form.addEventListener("submit", (event) => this.onSubmit(event));
    pageClient().subscribe(this.model, {
      pk: this.pk,
      since: this.since,
      onChange: (event) => this.onChange(event),
      onReset: () => this.onMissed(),
    });
    const here = pageClient().presence(this.model, this.pk, { editing: true });
    here.onChange((members) => this.renderOthers(members));
  }

  /** Name the other users who have this object's form open (not this user's own tabs). */
  renderOthers(members) {
    const names = members
      .filter((member) => String(member.user.id) !== this.userId)
      .map((member) => member.user.name || member.user.username || "Someone");
    if (!this.others) {
      this.others = document.createElement("p");
      this.others.className = "broadcast-others";
      this.others.setAttribute("role", "status");
      (document.getElementById("content-main") ?? this.form).prepend(this.others);
    }
    this.others.hidden = names.length === 0;
    this.others.textContent = editingText(names);
  }

  onChange(event) {
    // Our own save, on its way back to us while the page is leaving.
    if (this.saving) return;
    this.missed = false;
    if (event.op === "deleted") {
      this.deleted = event;
    } else {
      this.latest = event;
      for (const name of event.changed ?? []) this.changed.add(name);
    }
    this.acknowledged = false;
    this.render();
  }

  onMissed() {
    if (this.saving || this.latest || this.deleted) return;
    this.latest = { ts: new Date().toISOString(), data: {}, changed: [] };
    this.missed = true;
    this.render();
  }

  onSubmit(event) {
    if ((this.latest || this.deleted) && !this.acknowledged) {
      event.preventDefault();
      this.submitter = event.submitter;
      this.render({ confirming: true });
      this.banner.querySelector(".broadcast-save-anyway")?.focus();
      return;
    }
    this.saving = true;
  }

  render({ confirming = false } = {}) {
    const banner = this.banner ?? this.createBanner();
    const event = this.deleted ?? this.latest;
    const at = new Date(event.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const message = banner.querySelector(".broadcast-message");
    if (this.deleted) {
      message.textContent = `This ${this.name} was deleted by someone else at ${at}.`;
    } else if (this.missed) {
      message.textContent = `This ${this.name} may have been changed while the connection was down.`;
    } else {
      message.textContent = `This ${this.name} was changed by another user at ${at}.`;
    }
    banner.querySelector(".broadcast-see").hidden = this.deleted !== null || this.changed.size === 0;
    banner.querySelector(".broadcast-back").hidden = !(this.deleted && this.changelistUrl);
    this.renderDiff(banner.querySelector(".broadcast-diff"));
    const overwrite = banner.querySelector(".broadcast-overwrite");
    overwrite.hidden = !confirming;
    overwrite.firstChild.textContent = this.deleted
      ? "Saving now would recreate or fail on a deleted object. "
      : "Saving now would overwrite their changes. ";
    banner.classList.toggle("broadcast-banner-deleted", this.deleted !== null);
    flash(banner);
  }

  createBanner() {
    const banner = document.createElement("div");
    banner.className = "broadcast-banner";
    banner.setAttribute("role", "alert");
    const line = document.createElement("p");
    const message = document.createElement("strong");
    message.className = "broadcast-message";
    const reload = document.createElement("a");
    reload.href = location.href;
    reload.className = "broadcast-reload";
    reload.textContent = "Reload";
    const see = document.createElement("button");
    see.type = "button";
    see.className = "broadcast-see";
    see.textContent = "See what changed";
    see.setAttribute("aria-expanded", "false");
    const back = document.createElement("a");
    back.className = "broadcast-back";
    back.href = this.changelistUrl ?? "../../";
    back.textContent = `Back to the list`;
    // (No "saved on <instance>": an event's origin is opaque; the dashboard names it.)
    line.append(message, " ", reload, " ", see, " ", back);

    const diff = document.createElement("ul");
    diff.className = "broadcast-diff";
    diff.hidden = true;
    see.addEventListener("click", () => {
      diff.hidden = !diff.hidden;
      see.setAttribute("aria-expanded", String(!diff.hidden));
    });

    const overwrite = document.createElement("p");
    overwrite.className = "broadcast-overwrite";
    overwrite.hidden = true;
    const anyway = document.createElement("button");
    anyway.type = "button";
    anyway.className = "broadcast-save-anyway";
    anyway.textContent = "Save anyway";
    anyway.addEventListener("click", () => {
      this.acknowledged = true;
      this.form.requestSubmit(this.submitter ?? undefined);
    });
    overwrite.append(document.createTextNode(""), anyway);

    banner.append(line, diff, overwrite);
    (document.getElementById("content-main") ?? this.form).prepend(banner);
    this.banner = banner;
    return banner;
  }

  renderDiff(list) {
    const items = [];
    for (const name of this.changed) {
      const item = document.createElement("li");
      const label = document.createElement("strong");
      label.textContent = this.label(name);
      const input = this.form.elements.namedItem(name);
      const before = document.createElement("del");
      before.textContent = shown(initialValue(input));
      const after = document.createElement("ins");
      after.textContent = shown(this.latest?.data?.[name]);
      item.append(label, ": ", before, " → ", after);
      if (isEdited(input)) {
        const note = document.createElement("em");
        note.textContent = " — you changed it too";
        item.append(note);
      }
      items.push(item);
      this.form.querySelector(`.form-row.field-${CSS.escape(name)}`)?.classList.add("broadcast-conflict");
    }
    list.replaceChildren(...items);
  }

  label(name) {
    const label = this.form.querySelector(`label[for="id_${CSS.escape(name)}"]`);
    return label ? label.textContent.trim().replace(/:$/, "") : name;
  }
}

/** "Ann is also editing", "Ann and Ben are also editing", "Ann, Ben and 2 others are …". */
function editingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is also editing`;
  const shownNames = names.length > 3 ? [...names.slice(0, 2), `${names.length - 2} others`] : names;
  return `${shownNames.slice(0, -1).join(", ")} and ${shownNames.at(-1)} are also editing`;
}

/** A form control's value as the page loaded it (before the user's edits). */
function initialValue(input) {
  if (!input || input instanceof RadioNodeList) return undefined;
  if (input.type === "checkbox") return input.defaultChecked;
  if (input instanceof HTMLSelectElement) {
    return [...input.options].find((option) => option.defaultSelected)?.value ?? "";
  }
  return "defaultValue" in input ? input.defaultValue : undefined;
}

function isEdited(input) {
  if (!input || input instanceof RadioNodeList) return false;
  if (input.type === "checkbox") return input.checked !== input.defaultChecked;
  if (input instanceof HTMLSelectElement) return [...input.options].some((o) => o.selected !== o.defaultSelected);
  return "defaultValue" in input && input.value !== input.defaultValue;
}

function shown(value) {
  if (value === undefined) return "?";
  if (value === null || value === "") return "(empty)";
  if (typeof value === "boolean") return value ? "Yes" : "No";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

// Last: the classes above must be initialized before they are used.
const script = document.querySelector("script[data-broadcast-admin]");
if (script) start(script.dataset);
