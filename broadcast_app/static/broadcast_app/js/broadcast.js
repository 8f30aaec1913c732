/**
 * The browser client of broadcast_app: one websocket to `/ws/broadcast/` that carries
 * every subscription of the page.
 *
 * A plain ES module, no build step, no dependencies:
 *
 *     import { connect } from "/static/broadcast_app/js/broadcast.js";
 *     const client = connect({ onStatus: (status) => console.log(status) });
 *     const unsubscribe = client.subscribe("demo.product", {
 *       onChange: (event) => console.log(event.op, event.pk, event.data),
 *     });
 *
 * The client reconnects by itself (exponential backoff with jitter) and resubscribes
 * with `since`, the last event id each subscription saw, so the server can replay what
 * was missed meanwhile. An event id seen twice (a replay overlapping live events) is
 * delivered once. When the server cannot replay (it sends a `reset` frame), the
 * subscription's `onReset` is called: reload what the page shows. The subscription
 * keeps a position after a reset (the id live events followed from, or the last event
 * seen), so a reconnection later still resumes rather than skipping what it missed.
 *
 * Presence: `client.presence(model, pk, state)` makes this page a member of one object
 * (who has it open, with what state) and reports the object's members each time they
 * change, across every server instance:
 *
 *     const here = client.presence("demo.product", 12, { editing: false });
 *     here.onChange((members) => render(members.map((m) => m.user.name)));
 *     here.update({ editing: true });
 *     here.leave();
 *
 * A subscription may filter the model's rows (`where`, see docs/protocol.md): its events
 * then say whether the row entered, stayed in or left what it shows:
 *
 *     client.subscribe("demo.product", {
 *       where: { stock__lt: 5 },
 *       onChange: (event) => (event.match === "leave" ? rows.delete(event.pk)
 *                                                     : rows.set(event.pk, event.data)),
 *     });
 *
 * With `snapshot: true`, the server first sends the rows the subscription covers, as of
 * the position its live events follow from (`onSnapshot`); after a reconnection it
 * replays what was missed when it can, and sends a fresh snapshot when it cannot.
 *
 * Status changes go to `onStatus` and, as `broadcast:status` events (`detail` is the
 * status), to `document`, so a page can show a connection badge without a reference
 * to the client.
 *
 * @module broadcast
 */

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} Status */

/**
 * A change to one object, as the server sends it.
 *
 * @typedef {object} ChangeEvent
 * @property {"change"} type
 * @property {string} id  The event id, increasing per model.
 * @property {"created" | "updated" | "deleted"} op
 * @property {string} model  The model's label, `app_label.model_name`.
 * @property {string} pk
 * @property {Object<string, *> | null} data  The object's broadcast fields.
 * @property {string[]} changed  The fields an update changed.
 * @property {string} ts  When the change was published (ISO 8601).
 * @property {string} origin  An opaque id of the process that saved it (the staff dashboard names it).
 * @property {"enter" | "stay" | "leave"} [match]  On a filtered subscription only: the row
 *   entered the filter (or was created matching it), still matches, or left it (or was
 *   deleted). Take an `enter` of a row already shown as an update, and a `leave` of a
 *   row not shown as nothing: after a reconnection the server may not know which.
 * @property {Object<string, *>} [where]  On a filtered subscription only: its filter.
 */

/**
 * An error the server reports, about a subscription when `ref` is set.
 *
 * @typedef {object} ErrorFrame
 * @property {"error"} type
 * @property {string} code
 * @property {string} detail
 * @property {string} [ref]
 */

/**
 * The server could not replay what a subscription missed (`since` too old, or history
 * lost): whatever the page shows of that model (or object) may be stale.
 *
 * @typedef {object} ResetFrame
 * @property {"reset"} type
 * @property {string} model
 * @property {string | null} pk  `null`: every object of the model.
 * @property {Object<string, *>} [where]  The filter of the subscription it concerns.
 * @property {string} reason  Why: `too_old`, `epoch`, `unknown`, `malformed`,
 *   `unavailable`, `too_many`, `overflow`, `lost`, `incomplete` (see docs/protocol.md).
 */

/**
 * The rows a subscription covers, read from the database when it subscribed: every
 * change after `last_id` arrives as an event, none before it.
 *
 * @typedef {object} SnapshotFrame
 * @property {"snapshot"} type
 * @property {string} model
 * @property {string | null} pk
 * @property {Object<string, *>} [where]
 * @property {{pk: string, data: Object<string, *>}[]} rows  In the order asked.
 * @property {string | null} last_id
 * @property {boolean} complete  False when more rows matched than `limit` (or the
 *   server's bounds) let through.
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} [url]  The websocket URL. Default: `/ws/broadcast/` on this page's
 *   host, `wss:` when the page is served over `https:`.
 * @property {(status: Status) => void} [onStatus]  Called on each status change (the same
 *   status is also dispatched on `document` as a `broadcast:status` event).
 * @property {(error: ErrorFrame) => void} [onError]  Server errors no subscription handles.
 *   Default: `console.warn`.
 * @property {number} [pingInterval=20000]  Milliseconds between keepalive pings.
 * @property {number} [minDelay=500]  Milliseconds before the first reconnection attempt.
 * @property {number} [maxDelay=30000]  The longest wait between reconnection attempts.
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {string | number} [pk]  One object only; omit it for every object of the model.
 * @property {Object<string, *>} [where]  Only the rows that match these conditions,
 *   ANDed: `{stock__lt: 5, name__icontains: "pro"}` (lookups `exact`, `in`, `lt`, `lte`,
 *   `gt`, `gte`, `isnull`, `contains`, `icontains`, `startswith`, `istartswith`; see
 *   docs/protocol.md). Each event then carries `match`. Not with `pk`. A filter the
 *   server refuses reaches `onError` (`bad_request`, or `forbidden` for a field that is
 *   not broadcast).
 * @property {string} [since]  The id of the last event the page's state includes (e.g.
 *   rendered by the server); the server replays later ones where it can.
 * @property {boolean} [snapshot]  Start with the rows the subscription covers
 *   (`onSnapshot`), consistent with the live events that follow.
 * @property {number} [limit]  Most rows of the snapshot (the server's bound by default).
 * @property {string | string[]} [order]  The snapshot's order: field names, `-` first
 *   for descending (default: by primary key).
 * @property {(frame: SnapshotFrame) => void} [onSnapshot]  Called with the snapshot:
 *   replace what the page shows of this subscription with its rows.
 * @property {(event: ChangeEvent) => void} onChange  Called with each change event.
 * @property {(frame: ResetFrame) => void} [onReset]  Called when the server cannot replay
 *   what this subscription missed: reload the state shown (refetch, or reload the page).
 * @property {(error: ErrorFrame) => void} [onError]  Errors about this subscription.
 */

/**
 * One user present on an object (all of their tabs and devices together).
 *
 * @typedef {object} Member
 * @property {Object<string, *>} user  What the server's `BROADCAST_PRESENCE_USER` hook
 *   shows of the user (default: `id`, `username`, `name`).
 * @property {Object<string, *>} state  The state of the user's latest join or update.
 * @property {number} connections  How many of the user's connections are present.
 * @property {string} since  When the user's first present connection joined (ISO 8601).
 */

/**
 * @typedef {object} PresenceOptions
 * @property {(error: ErrorFrame) => void} [onError]  Errors about this presence (codes
 *   `forbidden`, `too_large`, `rate_limited`, `too_many_members`, `unavailable`, ...).
 */

/**
 * This page's presence on one object.
 *
 * @typedef {object} Presence
 * @property {(state: Object<string, *>) => void} update  Replace this page's state (the
 *   server bounds its size and how often it may change: see docs/protocol.md).
 * @property {() => void} leave  Stop being a member (and stop receiving the lists).
 * @property {(callback: (members: Member[]) => void) => () => void} onChange  Call
 *   `callback` with the object's members now (if known) and on each change; returns the
 *   function that stops it.
 * @property {Member[]} members  The latest member list received (`[]` before the first).
 */

/**
 * @typedef {object} Client
 * @property {(model: string, options: SubscribeOptions) => () => void} subscribe  Start
 *   receiving a model's (or one object's) changes; returns the function that stops it.
 * @property {(model: string, pk: string | number, state?: Object<string, *>,
 *   options?: PresenceOptions) => Presence} presence  Be present on one object (the
 *   logged-in user, who needs the permission to see it) and follow its members. The
 *   page subscribes to the object for it; the join is sent again after a reconnection.
 * @property {() => void} close  Close the connection for good.
 * @property {Status} status  The connection's current status.
 * @property {string} socketId  This connection's id (sent as `?socket_id=`). Send it
 *   back as the `X-Socket-ID` header of your own requests (with
 *   `X-Broadcast-To-Others: 1`) to be spared the echo of your own changes.
 */

/** How many recent event ids are remembered to drop duplicates. */
const SEEN_IDS_KEPT = 1000;

/**
 * Open a connection to the broadcast websocket.
 *
 * @param {ConnectOptions} [options]
 * @returns {Client}
 */
export function connect(options = {}) {
  const {
    url = defaultUrl(),
    onStatus = () => {},
    onError = (error) => console.warn("broadcast:", error.code, error.detail),
    pingInterval = 20_000,
    minDelay = 500,
    maxDelay = 30_000,
  } = options;
  const socketId = newSocketId();

  /** One entry per model, model and pk, or model and where; several subscribe() calls
   * may share one. */
  const subscriptions = new Map();
  /** One entry per object this page is present on; several presence() calls may share one. */
  const presences = new Map();
  const seenIds = new Set();
  let socket = null;
  let status = null;
  let closed = false;
  let attempt = 0;
  let lastHeard = 0;
  let refs = 0;
  let retryTimer = null;
  let pingTimer = null;

  function setStatus(next) {
    if (next === status) return;
    status = next;
    onStatus(next);
    document.dispatchEvent(new CustomEvent("broadcast:status", { detail: next }));
  }

  function send(frame) {
    if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function subscribeFrame(sub) {
    const frame = { type: "subscribe", model: sub.model, ref: sub.ref };
    if (sub.pk !== null) frame.pk = sub.pk;
    if (sub.where !== null) frame.where = sub.where;
    if (sub.lastId !== null) frame.since = sub.lastId;
    if (sub.snapshot) Object.assign(frame, sub.snapshot);
    return frame;
  }

  function open() {
    setStatus(attempt === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(withSocketId(url, socketId));
    socket = ws;
    ws.onopen = () => {
      lastHeard = Date.now();
      setStatus("open");
      for (const sub of subscriptions.values()) send(subscribeFrame(sub));
      // After the subscriptions: the server joins only objects the connection follows.
      for (const entry of presences.values()) send(joinFrame(entry));
      pingTimer = setInterval(keepalive, pingInterval);
    };
    ws.onmessage = (message) => {
      lastHeard = Date.now();
      // Only a server that talks back counts as recovered: one that accepts and then
      // closes at once must not be hammered at the shortest delay.
      attempt = 0;
      receive(message.data);
    };
    // An "error" is always followed by "close", which does the work.
    ws.onclose = () => dropped(ws);
  }

  function keepalive() {
    // Nothing heard through two pings: the connection is dead without having closed
    // (a sleeping laptop, a dropped network), so stop waiting for "close".
    if (Date.now() - lastHeard > 2 * pingInterval) {
      dropped(socket);
      return;
    }
    send({ type: "ping" });
  }

  function dropped(ws) {
    if (ws === null || ws !== socket) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.close();
    socket = null;
    clearInterval(pingTimer);
    if (closed) return;
    const delay = Math.min(maxDelay, minDelay * 2 ** attempt);
    attempt += 1;
    setStatus("reconnecting");
    // Jitter spreads the reconnections of many pages after a server restart.
    retryTimer = setTimeout(open, delay / 2 + (Math.random() * delay) / 2);
  }

  function retryNow() {
    // The network is back: waiting out a long backoff would only delay the page.
    if (closed || socket !== null) return;
    clearTimeout(retryTimer);
    open();
  }

  function receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "change") {
      deliver(frame);
    } else if (frame.type === "subscribed") {
      const sub = byRef(frame.ref);
      if (sub) {
        // Every event after `last_id` reaches this connection live (or replayed first).
        sub.subscribedAt = frame.last_id ?? null;
        sub.changedSinceSubscribed = false;
        // Without events of its own yet, a subscription resumes from where it started.
        if (sub.lastId === null && frame.last_id) sub.lastId = frame.last_id;
      }
    } else if (frame.type === "reset") {
      reset(frame);
    } else if (frame.type === "presence") {
      presenceChanged(frame);
    } else if (frame.type === "snapshot") {
      snapshot(frame);
    } else if (frame.type === "error") {
      if (frame.code === "rate_limited") retryJoin(presenceByRef(frame.ref));
      const listeners = byRef(frame.ref)?.listeners ?? presenceByRef(frame.ref)?.handles ?? [];
      const handlers = [...listeners].map((listener) => listener.onError).filter(Boolean);
      for (const handler of handlers.length ? handlers : [onError]) call(handler, frame);
    }
  }

  function deliver(event) {
    // One event comes once per filter it concerns, and once more for the plain ones.
    const filter = event.where ? whereKey(event.where) : null;
    const seen = filter === null ? event.id : `${event.id} ${filter}`;
    if (seenIds.has(seen)) return;
    seenIds.add(seen);
    if (seenIds.size > SEEN_IDS_KEPT) seenIds.delete(seenIds.values().next().value);
    const pk = String(event.pk);
    for (const sub of subscriptions.values()) {
      if (sub.model !== event.model || sub.filter !== filter) continue;
      if (sub.pk !== null && sub.pk !== pk) continue;
      sub.lastId = event.id;
      sub.changedSinceSubscribed = true;
      for (const listener of [...sub.listeners]) call(listener.onChange, event);
    }
  }

  function reset(frame) {
    const pk = frame.pk === null || frame.pk === undefined ? null : String(frame.pk);
    const filter = frame.where ? whereKey(frame.where) : null;
    for (const sub of subscriptions.values()) {
      if (sub.model !== frame.model || sub.filter !== filter) continue;
      if (pk !== null && sub.pk !== null && sub.pk !== pk) continue;
      // A reset never drops the position: resuming without `since` would skip, in
      // silence, whatever changes while the connection is down. A reset right after
      // `subscribed` refused the resume: the old id would be refused again, so resume
      // from the subscription's start, after which every event arrived live. A later
      // reset (overflow, lost) keeps the last event seen: resuming from it replays
      // what was dropped, or is answered with another reset.
      if (!sub.changedSinceSubscribed && sub.subscribedAt) sub.lastId = sub.subscribedAt;
      for (const listener of [...sub.listeners]) if (listener.onReset) call(listener.onReset, frame);
    }
  }

  function snapshot(frame) {
    const pk = frame.pk === null || frame.pk === undefined ? null : String(frame.pk);
    const filter = frame.where ? whereKey(frame.where) : null;
    for (const sub of subscriptions.values()) {
      if (sub.model !== frame.model || sub.filter !== filter || sub.pk !== pk) continue;
      // The rows include every event up to last_id: resume from there.
      if (frame.last_id) sub.lastId = frame.last_id;
      for (const listener of [...sub.listeners]) {
        if (listener.onSnapshot) call(listener.onSnapshot, frame);
      }
    }
  }

  function byRef(ref) {
    for (const sub of subscriptions.values()) if (sub.ref === ref) return sub;
    return undefined;
  }

  function subscribe(model, options = {}) {
    const { pk = null, where = null, since = null, onChange, onReset, onSnapshot } = options;
    const onSubError = options.onError;
    if (typeof onChange !== "function") throw new TypeError("subscribe() needs onChange");
    if (where !== null && pk !== null) throw new TypeError("subscribe() takes pk or where");
    const filter = where === null ? null : whereKey(where);
    const key = filter !== null ? `${model}?${filter}` : pk === null ? model : `${model}#${pk}`;
    let sub = subscriptions.get(key);
    if (!sub) {
      sub = { model, pk: pk === null ? null : String(pk), where, filter, ref: `s${++refs}` };
      sub.lastId = since || null;
      sub.snapshot = null;
      sub.subscribedAt = null;
      sub.changedSinceSubscribed = false;
      sub.listeners = new Set();
      subscriptions.set(key, sub);
    }
    const fresh = sub.listeners.size === 0;
    if (options.snapshot) {
      const { limit, order } = options;
      sub.snapshot = { snapshot: true, ...(limit ? { limit } : {}), ...(order ? { order } : {}) };
    }
    // A subscription already running: a snapshot for the page part that joins it.
    if (fresh) send(subscribeFrame(sub));
    else if (options.snapshot) send({ ...subscribeFrame(sub), since: undefined });
    const listener = { onChange, onReset, onSnapshot, onError: onSubError };
    sub.listeners.add(listener);
    return () => {
      if (!sub.listeners.delete(listener) || sub.listeners.size) return;
      subscriptions.delete(key);
      const frame = { type: "unsubscribe", model };
      if (sub.pk !== null) frame.pk = sub.pk;
      if (sub.where !== null) frame.where = sub.where;
      send(frame);
    };
  }

  function joinFrame(entry) {
    return { type: "presence.join", model: entry.model, pk: entry.pk, state: entry.state,
             ref: entry.ref };
  }

  function presenceChanged(frame) {
    const entry = presences.get(`${frame.model}#${frame.pk}`);
    if (!entry) return;
    entry.members = frame.members;
    for (const handle of [...entry.handles]) {
      for (const callback of [...handle.callbacks]) call(callback, frame.members);
    }
  }

  function retryJoin(entry) {
    // Updates came faster than the server takes them: send the latest state once more,
    // a second later, rather than leave the members seeing an older one.
    if (!entry || entry.retry) return;
    entry.retry = setTimeout(() => {
      entry.retry = null;
      if (presences.get(`${entry.model}#${entry.pk}`) === entry) send(joinFrame(entry));
    }, 1000);
  }

  function presenceByRef(ref) {
    for (const entry of presences.values()) if (entry.ref === ref) return entry;
    return undefined;
  }

  function presence(model, pk, state = {}, options = {}) {
    const key = `${model}#${pk}`;
    let entry = presences.get(key);
    if (!entry) {
      entry = { model, pk: String(pk), state, ref: `p${++refs}`, members: [],
                handles: new Set() };
      // The lists come to the object's subscribers: follow it for as long as present.
      entry.unsubscribe = subscribe(model, { pk, onChange: () => {} });
      presences.set(key, entry);
    }
    const handle = { callbacks: new Set(), onError: options.onError };
    entry.handles.add(handle);
    entry.state = state;
    send(joinFrame(entry));
    return {
      update(next) {
        if (!entry.handles.has(handle)) return;
        entry.state = next;
        send(joinFrame(entry));
      },
      leave() {
        if (!entry.handles.delete(handle) || entry.handles.size) return;
        presences.delete(key);
        clearTimeout(entry.retry);
        send({ type: "presence.leave", model, pk: entry.pk });
        entry.unsubscribe();
      },
      onChange(callback) {
        handle.callbacks.add(callback);
        if (entry.members.length) call(callback, entry.members);
        return () => handle.callbacks.delete(callback);
      },
      get members() {
        return entry.members;
      },
    };
  }

  function close() {
    closed = true;
    clearTimeout(retryTimer);
    window.removeEventListener("online", retryNow);
    dropped(socket);
    setStatus("closed");
  }

  window.addEventListener("online", retryNow);
  open();
  return {
    subscribe,
    presence,
    close,
    socketId,
    get status() {
      return status;
    },
  };
}

/** A filter's identity: its conditions in key order (the server echoes them sorted). */
function whereKey(where) {
  return JSON.stringify(Object.keys(where).sort().map((name) => [name, where[name]]));
}

/** A random id for this page's connection; it keeps it across reconnections. */
function newSocketId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function withSocketId(url, socketId) {
  const separator = url.includes("?") ? "&" : "?";
  return `${url}${separator}socket_id=${encodeURIComponent(socketId)}`;
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/broadcast/`;
}

/** Run a callback so that its exception is reported but stops nothing else. */
function call(callback, argument) {
  try {
    callback(argument);
  } catch (error) {
    console.error(error);
  }
}
