"""broadcast.js in a real browser, against a scripted fake WebSocket.

The page is served by Playwright itself (no server), and ``window.WebSocket`` is
replaced before any script runs, so each test plays the server's part frame by frame:
backoff, jitter, resubscription with ``since``, duplicates, ``reset`` and keepalive
are checked exactly, without waiting on a real network.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.browser_support import BASE_DIR, chromium, collect_page_errors

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

STATIC = BASE_DIR / "broadcast_app" / "static"
PAGE = """<!doctype html><meta charset="utf-8"><title>broadcast.js</title>
<script type="module">
  import * as broadcast from "/static/broadcast_app/js/broadcast.js";
  window.broadcast = broadcast;
</script>"""

# Installed before the page's scripts: a WebSocket the test drives by hand.
FAKE_WEBSOCKET = """
window.sockets = [];
class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    window.sockets.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  serverOpen() { this.readyState = 1; this.onopen?.(); }
  serverSend(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
  serverClose() { this.readyState = 3; this.onclose?.({ code: 1006 }); }
}
window.WebSocket = FakeWebSocket;
// Resolves once cond() holds (checked every few ms, bounded): the page's own waiting.
const realSetTimeout = window.setTimeout.bind(window);
window.until = (cond, ms = 5000) => new Promise((resolve, reject) => {
  const deadline = Date.now() + ms;
  const check = () => cond() ? resolve() : Date.now() > deadline
    ? reject(new Error("timed out waiting for " + cond)) : realSetTimeout(check, 2);
  check();
});
window.change = (id, pk = "7", model = "demo.product") =>
  ({ type: "change", id, op: "updated", model, pk, data: { id: Number(pk) }, changed: [] });
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with chromium() as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context()
    page = await context.new_page()
    errors = collect_page_errors(page)

    async def serve(route: Any) -> None:
        path = route.request.url.removeprefix("http://app.test")
        if path == "/":
            await route.fulfill(body=PAGE, content_type="text/html")
            return
        file = (STATIC / path.removeprefix("/static/")).resolve()
        if not path.startswith("/static/") or STATIC not in file.parents or not file.is_file():
            await route.fulfill(status=404)
            return
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        await route.fulfill(body=file.read_bytes(), content_type=content_type)

    await page.route("http://app.test/**", serve)
    await page.add_init_script(FAKE_WEBSOCKET)
    await page.goto("http://app.test/")
    await page.wait_for_function("window.broadcast !== undefined")
    yield page
    assert errors == []
    await context.close()


async def test_subscribe_delivers_each_event_once_and_unsubscribes(page: Any) -> None:
    result = await page.evaluate(
        """() => {
          const statuses = [];
          const ids = [];
          document.addEventListener("broadcast:status", (e) => statuses.push("dom:" + e.detail));
          const client = broadcast.connect({ onStatus: (s) => statuses.push(s) });
          const stop = client.subscribe("demo.product", {
            pk: 7, since: "5-0", onChange: (e) => ids.push(e.id),
          });
          const ws = sockets[0];
          ws.serverOpen();
          ws.serverSend({ type: "subscribed", model: "demo.product", pk: "7",
                          ref: ws.sent[0].ref, last_id: "9-0" });
          for (const id of ["10-0", "10-0", "11-0"]) ws.serverSend(change(id));
          ws.serverSend(change("12-0", "8"));  // another object
          stop();
          ws.serverSend(change("13-0"));  // after unsubscribing
          return { url: ws.url, statuses, ids, sent: ws.sent, status: client.status,
                   socketId: client.socketId };
        }"""
    )
    # The page's id for this connection travels in the URL (echo control).
    assert result["socketId"]
    assert result["url"] == f"ws://app.test/ws/broadcast/?socket_id={result['socketId']}"
    assert result["statuses"] == ["connecting", "dom:connecting", "open", "dom:open"]
    assert result["ids"] == ["10-0", "11-0"]
    assert result["sent"] == [
        {"type": "subscribe", "model": "demo.product", "ref": "s1", "pk": "7", "since": "5-0"},
        {"type": "unsubscribe", "model": "demo.product", "pk": "7"},
    ]
    assert result["status"] == "open"


async def test_reconnects_with_backoff_and_jitter_and_resumes_with_since(page: Any) -> None:
    result = await page.evaluate(
        """async () => {
          const delays = [];
          const statuses = [];
          // Record each delay asked for, and wait it out at once.
          const realSetTimeout = window.setTimeout.bind(window);
          window.setTimeout = (fn, ms) => { delays.push(ms); return realSetTimeout(fn, 0); };
          Math.random = () => 0;  // the low end of the jitter: half the nominal delay
          const client = broadcast.connect({
            minDelay: 100, maxDelay: 400, onStatus: (s) => statuses.push(s),
          });
          client.subscribe("demo.product", { onChange() {} });
          sockets[0].serverOpen();
          sockets[0].serverSend(change("20-0"));
          sockets[0].serverClose();
          for (let n = 1; n <= 3; n++) {  // three failed attempts in a row
            await until(() => sockets.length === n + 1);
            sockets[n].serverClose();
          }
          await until(() => sockets.length === 5);
          sockets[4].serverOpen();
          return { delays, statuses, sent: sockets[4].sent };
        }"""
    )
    # Nominal 100, 200, 400, then capped at 400; jitter takes between half and all of it.
    assert result["delays"] == [50, 100, 200, 200]
    assert result["statuses"] == ["connecting", "open", "reconnecting", "open"]
    assert result["sent"] == [
        {"type": "subscribe", "model": "demo.product", "ref": "s1", "since": "20-0"}
    ]


async def test_reset_frames_reach_on_reset_of_matching_subscriptions(page: Any) -> None:
    result = await page.evaluate(
        """async () => {
          const resets = [];
          const client = broadcast.connect({ minDelay: 1, maxDelay: 1 });
          const on = (name) => ({ onChange() {}, onReset: (f) => resets.push([name, f.reason]) });
          client.subscribe("demo.product", on("model"));
          client.subscribe("demo.product", { pk: 3, ...on("pk3") });
          client.subscribe("auth.user", on("other model"));
          const ws = sockets[0];
          ws.serverOpen();
          ws.serverSend(change("30-0", "3"));
          ws.serverSend({ type: "reset", model: "demo.product", pk: "3", reason: "too old" });
          ws.serverSend({ type: "reset", model: "demo.product", pk: "4", reason: "gone" });
          ws.serverClose();
          await until(() => sockets.length === 2);
          sockets[1].serverOpen();
          return { resets, resubscribed: sockets[1].sent };
        }"""
    )
    assert result["resets"] == [["model", "too old"], ["pk3", "too old"], ["model", "gone"]]
    # A reset keeps the position (the last event seen): never a resume without since.
    assert [frame.get("since") for frame in result["resubscribed"]] == ["30-0", "30-0", None]


async def test_after_a_refused_resume_the_next_reconnection_resumes_from_the_live_start(
    page: Any,
) -> None:
    """The server refuses ``since`` (reset after ``subscribed``): the page reloads, and
    a later reconnection resumes from ``subscribed``'s ``last_id``, after which every
    event arrived live — not without ``since``, which would skip what changes while
    the connection is down, in silence."""
    result = await page.evaluate(
        """async () => {
          const resets = [];
          const client = broadcast.connect({ minDelay: 1, maxDelay: 1 });
          client.subscribe("demo.product", {
            since: "5-0:e", onChange() {}, onReset: (f) => resets.push(f.reason),
          });
          client.subscribe("demo.product", { pk: 3, since: "6-0:e", onChange() {} });
          const ws = sockets[0];
          ws.serverOpen();
          for (const frame of ws.sent) {
            ws.serverSend({ type: "subscribed", model: "demo.product", pk: frame.pk ?? null,
                            ref: frame.ref, last_id: "40-0:e" });
            ws.serverSend({ type: "reset", model: "demo.product", pk: frame.pk ?? null,
                            reason: "too_old" });
          }
          ws.serverClose();
          await until(() => sockets.length === 2);
          const second = sockets[1];
          second.serverOpen();
          // On this connection, events arrive, then the client falls behind (overflow).
          for (const frame of second.sent) {
            second.serverSend({ type: "subscribed", model: "demo.product", pk: frame.pk ?? null,
                                ref: frame.ref, last_id: "40-0:e" });
          }
          second.serverSend(change("41-0:e", "3"));
          second.serverSend({ type: "reset", model: "demo.product", pk: null,
                              reason: "overflow" });
          second.serverClose();
          await until(() => sockets.length === 3);
          sockets[2].serverOpen();
          return { resets, first: second.sent, then: sockets[2].sent };
        }"""
    )
    # The model-wide subscription also hears the reset of its object pk 3.
    assert result["resets"] == ["too_old", "too_old", "overflow"]
    assert [frame.get("since") for frame in result["first"]] == ["40-0:e", "40-0:e"]
    # After the overflow, resuming from the last event seen replays what was dropped.
    assert [frame.get("since") for frame in result["then"]] == ["41-0:e", "41-0:e"]


async def test_keepalive_pings_and_gives_up_on_a_silent_connection(page: Any) -> None:
    result = await page.evaluate(
        """async () => {
          const client = broadcast.connect({ pingInterval: 20, minDelay: 1, maxDelay: 1 });
          const ws = sockets[0];
          ws.serverOpen();
          await until(() => ws.sent.some((f) => f.type === "ping"));
          ws.serverSend({ type: "pong" });
          // Then silence: after two intervals without a word, the client reconnects.
          await until(() => sockets.length === 2);
          const statusAfterDrop = client.status;
          client.close();
          return { statusAfterDrop, closed: client.status, oldState: ws.readyState };
        }"""
    )
    assert result["statusAfterDrop"] == "reconnecting"
    assert result["closed"] == "closed"
    assert result["oldState"] == 3


async def test_close_stops_reconnecting(page: Any) -> None:
    result = await page.evaluate(
        """() => {
          const client = broadcast.connect({ minDelay: 1, maxDelay: 1 });
          sockets[0].serverOpen();
          let timers = 0;
          const realSetTimeout = window.setTimeout.bind(window);
          window.setTimeout = (...args) => { timers += 1; return realSetTimeout(...args); };
          client.close();
          sockets[0].serverClose();  // a late close event changes nothing
          return { timers, sockets: sockets.length, status: client.status };
        }"""
    )
    assert result == {"timers": 0, "sockets": 1, "status": "closed"}


async def test_presence_joins_after_subscribing_follows_members_and_leaves(page: Any) -> None:
    result = await page.evaluate(
        """() => {
          const client = broadcast.connect();
          const seen = [];
          const errors = [];
          // Before the socket opens: both frames go out once it does, in order.
          const here = client.presence("demo.product", 7, { editing: false },
                                       { onError: (e) => errors.push(e.code) });
          const stop = here.onChange((members) => seen.push(members.map((m) => m.user.id)));
          const ws = sockets[0];
          ws.serverOpen();
          const opened = ws.sent.slice();
          const member = (id) => ({ user: { id }, state: {}, connections: 1, since: "t" });
          ws.serverSend({ type: "presence", model: "demo.product", pk: "7",
                          members: [member(1)] });
          ws.serverSend({ type: "presence", model: "demo.product", pk: "8",
                          members: [member(9)] });  // another object
          here.update({ editing: true });
          ws.serverSend({ type: "presence", model: "demo.product", pk: "7",
                          members: [member(1), member(2)] });
          ws.serverSend({ type: "error", code: "forbidden", detail: "no", ref: opened[1].ref });
          const late = [];
          here.onChange((members) => late.push(members.length));  // told at once
          stop();
          ws.serverSend({ type: "presence", model: "demo.product", pk: "7", members: [] });
          // A reconnection subscribes, then joins again with the latest state.
          ws.serverClose();
          return { opened, seen, late, errors, members: here.members, sent: ws.sent };
        }"""
    )
    subscribe = {"type": "subscribe", "model": "demo.product", "ref": "s2", "pk": "7"}
    join = {"type": "presence.join", "model": "demo.product", "pk": "7", "ref": "p1"}
    assert result["opened"] == [subscribe, {**join, "state": {"editing": False}}]
    assert result["sent"][2] == {**join, "state": {"editing": True}}
    assert result["seen"] == [[1], [1, 2]]
    assert result["late"] == [2, 0]
    assert result["errors"] == ["forbidden"]
    assert result["members"] == []
    result = await page.evaluate(
        """async () => {
          await until(() => sockets.length > 1);
          const ws = sockets[1];
          ws.serverOpen();
          const reopened = ws.sent.slice();
          return { reopened };
        }"""
    )
    assert result["reopened"] == [subscribe, {**join, "state": {"editing": True}}]


async def test_filtered_subscriptions_get_their_own_frames(page: Any) -> None:
    result = await page.evaluate(
        """() => {
          const seen = [];
          const client = broadcast.connect();
          const on = (name) => ({
            onChange: (e) => seen.push([name, e.id, e.match ?? null]),
            onReset: (f) => seen.push([name, "reset", f.reason]),
          });
          const stopLow = client.subscribe("demo.product", {
            where: { stock__lt: 5, name__icontains: "pro" }, ...on("low"),
          });
          client.subscribe("demo.product", { where: { stock__gte: 5 }, ...on("high") });
          client.subscribe("demo.product", on("plain"));
          let refused = null;
          try { client.subscribe("demo.product", { pk: 1, where: { stock: 1 }, ...on("x") }); }
          catch (error) { refused = error.name; }
          const ws = sockets[0];
          ws.serverOpen();
          const low = { name__icontains: "pro", stock__lt: 5 };  // as the server sorts it
          ws.serverSend({ ...change("40-0"), match: "enter", where: low });
          ws.serverSend(change("40-0"));
          ws.serverSend({ ...change("40-0"), match: "enter", where: low });  // a duplicate
          ws.serverSend({ ...change("41-0"), match: "leave", where: low });
          ws.serverSend({ ...change("41-0"), match: "enter", where: { stock__gte: 5 } });
          ws.serverSend({ type: "reset", model: "demo.product", pk: null, where: low,
                          reason: "overflow" });
          stopLow();
          return { seen, refused, sent: ws.sent };
        }"""
    )
    assert result["refused"] == "TypeError"
    assert result["seen"] == [
        ["low", "40-0", "enter"],
        ["plain", "40-0", None],
        ["low", "41-0", "leave"],
        ["high", "41-0", "enter"],
        ["low", "reset", "overflow"],
    ]
    where = {"stock__lt": 5, "name__icontains": "pro"}
    assert result["sent"] == [
        {"type": "subscribe", "model": "demo.product", "ref": "s1", "where": where},
        {"type": "subscribe", "model": "demo.product", "ref": "s2", "where": {"stock__gte": 5}},
        {"type": "subscribe", "model": "demo.product", "ref": "s3"},
        {"type": "unsubscribe", "model": "demo.product", "where": where},
    ]


async def test_snapshots_reach_on_snapshot_and_reconnections_ask_again(page: Any) -> None:
    result = await page.evaluate(
        """async () => {
          const got = [];
          const client = broadcast.connect({ minDelay: 1, maxDelay: 1 });
          const where = { stock__lt: 5 };
          client.subscribe("demo.product", {
            where, snapshot: true, limit: 10, order: "-price",
            onSnapshot: (f) => got.push(["snapshot", f.rows.length]),
            onChange: (e) => got.push(["change", e.id]),
          });
          const ws = sockets[0];
          ws.serverOpen();
          ws.serverSend({ type: "subscribed", model: "demo.product", pk: null, where,
                          ref: ws.sent[0].ref, last_id: "50-0", snapshot: true });
          ws.serverSend({ type: "snapshot", model: "demo.product", pk: null, where,
                          rows: [{ pk: "1", data: {} }], last_id: "50-0", complete: true });
          ws.serverSend({ type: "snapshot", model: "demo.product", pk: null,
                          rows: [], last_id: "60-0", complete: true });  // not this one's
          ws.serverSend({ ...change("51-0"), match: "enter", where });
          // A second part of the page joins with a snapshot of its own.
          client.subscribe("demo.product", {
            where, snapshot: true, onSnapshot: () => got.push(["joined"]), onChange() {},
          });
          ws.serverClose();
          await until(() => sockets.length === 2);
          sockets[1].serverOpen();
          return { got, first: ws.sent, again: sockets[1].sent };
        }"""
    )
    assert result["got"] == [["snapshot", 1], ["change", "51-0"]]
    where = {"stock__lt": 5}
    asked = {"type": "subscribe", "model": "demo.product", "ref": "s1", "where": where}
    asked |= {"snapshot": True, "limit": 10, "order": "-price"}
    joined = {"type": "subscribe", "model": "demo.product", "ref": "s1", "where": where}
    joined["snapshot"] = True  # (no since: the joining part has nothing yet)
    assert result["first"] == [asked, joined]
    # After a reconnection: resume from the last event, a snapshot if the log cannot
    # (with the options the latest subscribe() gave).
    assert result["again"] == [{**joined, "since": "51-0"}]
