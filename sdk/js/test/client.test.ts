// Unit tests of FreshrankClient with an injected fetch, clock, random and timers (node:test).
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { EVENT_TYPE_SYMBOLS, FreshrankClient, INTERACTION_EVENT_FIELDS } from "../src/index.js";
import type { ClientOptions, InteractionEvent, Rejection } from "../src/index.js";

interface Call {
  url: string;
  headers: Record<string, string>;
  events: InteractionEvent[];
}

/** A collector double: answers each POST with the next scripted response. */
function harness(responses: (Response | Error | ((events: InteractionEvent[]) => Response))[], extra: Partial<ClientOptions> = {}) {
  const calls: Call[] = [];
  const timers: { callback: () => void; ms: number }[] = [];
  const beacons: { url: string; body: Blob }[] = [];
  let id = 0;
  const fetchDouble = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const body = JSON.parse(String(init?.body)) as { events: InteractionEvent[] };
    calls.push({ url: String(input), headers: init?.headers as Record<string, string>, events: body.events });
    const next = responses.shift() ?? accepted(body.events.length);
    if (next instanceof Error) throw next;
    return typeof next === "function" ? next(body.events) : next;
  };
  const client = new FreshrankClient({
    endpoint: "http://api.test/",
    apiKey: "site-key",
    batchSize: 3,
    fetch: fetchDouble as typeof fetch,
    now: () => 1_795_000_000_000,
    random: () => 0.5,
    newId: () => `id-${++id}`,
    setTimer: (callback, ms) => {
      timers.push({ callback, ms });
      return timers.length;
    },
    clearTimer: () => undefined,
    sendBeacon: (url, body) => {
      beacons.push({ url, body });
      return true;
    },
    flushOnPageHide: false,
    ...extra,
  });
  return { client, calls, timers, beacons };
}

function accepted(count: number): Response {
  return Response.json({ accepted: count, rejected: [] }, { status: 202 });
}

const view = { user_id: "u-1", item_id: "i-1", event_type: "view" as const, watch_ms: 1200 };

describe("types generated from the Avro schema", () => {
  it("carry every enum symbol and field of features/schemas", () => {
    assert.deepEqual([...EVENT_TYPE_SYMBOLS], ["impression", "click", "view", "like", "share", "skip", "complete"]);
    assert.ok(INTERACTION_EVENT_FIELDS.includes("event_time") && INTERACTION_EVENT_FIELDS.includes("country"));
  });
});

describe("FreshrankClient", () => {
  it("fills id and time, batches by batchSize and sends the API key", async () => {
    const { client, calls } = harness([]);
    const first = client.track(view);
    assert.equal(first.event_id, "id-1");
    assert.equal(first.event_time, 1_795_000_000_000);
    client.track(view);
    assert.equal(calls.length, 0);
    client.track({ ...view, event_id: "mine" });
    await client.flush();
    assert.equal(calls.length, 1);
    assert.equal(calls[0]!.url, "http://api.test/v1/events");
    assert.equal(calls[0]!.headers["X-API-Key"], "site-key");
    assert.deepEqual(calls[0]!.events.map((e) => e.event_id), ["id-1", "id-2", "mine"]);
    assert.deepEqual(client.stats, { queued: 0, accepted: 3, rejected: 0, dropped: 0, retries: 0, beaconed: 0 });
  });

  it("sends a partial batch after flushIntervalMs", async () => {
    const { client, calls, timers } = harness([]);
    client.track(view);
    assert.equal(timers.length, 1);
    assert.equal(timers[0]!.ms, 1000);
    timers[0]!.callback();
    await client.flush();
    assert.equal(calls.length, 1);
  });

  it("retries 429, 5xx and network errors with jittered exponential backoff and honours Retry-After", async () => {
    const tooMany = new Response("{}", { status: 429, headers: { "Retry-After": "3" } });
    const { client, calls, timers } = harness([new Error("offline"), new Response("{}", { status: 503 }), tooMany]);
    client.track(view);
    await client.flush(); // network error
    assert.equal(timers.at(-1)!.ms, 250); // random 0.5 * 500 * 2^0
    timers.at(-1)!.callback();
    await client.flush(); // 503
    assert.equal(timers.at(-1)!.ms, 500); // 0.5 * 500 * 2^1
    timers.at(-1)!.callback();
    await client.flush(); // 429 with Retry-After: 3
    assert.equal(timers.at(-1)!.ms, 3000);
    timers.at(-1)!.callback();
    await client.flush();
    assert.equal(calls.length, 4);
    assert.ok(calls.every((call) => call.events[0]!.event_id === "id-1"), "the same event is resent");
    assert.deepEqual(client.stats, { queued: 0, accepted: 1, rejected: 0, dropped: 0, retries: 3, beaconed: 0 });
  });

  it("caps the backoff at retryMaxMs", async () => {
    const failures = Array.from({ length: 12 }, () => new Response("{}", { status: 500 }));
    const { client, timers } = harness(failures, { random: () => 0.999, retryMaxMs: 4000 });
    client.track(view);
    for (let i = 0; i < 12; i += 1) {
      await client.flush();
      timers.at(-1)!.callback();
    }
    assert.ok(timers.every((t) => t.ms <= 4000));
    assert.equal(timers.at(-1)!.ms, 3996);
  });

  it("reports rejected events with their reason and never resends them", async () => {
    const verdict = Response.json(
      { accepted: 1, rejected: [{ index: 1, event_id: "id-2", field: "event_type", reason: "'buy' is not one of" }] },
      { status: 202 },
    );
    const seen: Rejection[] = [];
    const { client, calls } = harness([verdict], { onRejected: (r) => seen.push(...r) });
    client.track(view);
    client.track({ ...view, event_type: "buy" as "view" });
    await client.flush();
    await client.flush();
    assert.equal(calls.length, 1);
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.event.event_id, "id-2");
    assert.equal(seen[0]!.field, "event_type");
    assert.equal(client.stats.rejected, 1);
    assert.equal(client.stats.accepted, 1);
  });

  it("resends only the events the collector asked to resend (queue full server-side)", async () => {
    const partial = Response.json(
      {
        accepted: 1,
        rejected: [
          { index: 1, event_id: "id-2", field: "event", reason: "not accepted: the event queue towards Kafka is full; resend this event" },
        ],
      },
      { status: 202 },
    );
    const { client, calls, timers } = harness([partial]);
    client.track(view);
    client.track(view);
    await client.flush();
    timers.at(-1)!.callback();
    await client.flush();
    assert.deepEqual(calls.map((c) => c.events.map((e) => e.event_id)), [["id-1", "id-2"], ["id-2"]]);
    assert.equal(client.stats.accepted, 2);
  });

  it("keeps a bounded queue: drops the oldest and counts them", async () => {
    const { client } = harness([], { maxQueue: 5, batchSize: 100 });
    for (let i = 0; i < 8; i += 1) client.track(view);
    assert.equal(client.stats.queued, 5);
    assert.equal(client.stats.dropped, 3);
  });

  it("does not retry a refused key; reports it", async () => {
    const errors: Error[] = [];
    const { client, calls } = harness([new Response('{"error":"unauthorized"}', { status: 401 })], {
      onError: (e) => errors.push(e),
    });
    client.track(view);
    await client.flush();
    await client.flush();
    assert.equal(calls.length, 1);
    assert.match(errors[0]!.message, /401/);
  });

  it("beacons the queue on page hide as text/plain with the key in the query, within the size limit", async () => {
    const { client, beacons } = harness([], { batchSize: 100, beaconMaxBytes: 1000 });
    for (let i = 0; i < 10; i += 1) client.track({ ...view, item_id: `item-${i}` });
    client.flushWithBeacon();
    assert.ok(beacons.length >= 2, "split by size");
    assert.equal(beacons[0]!.url, "http://api.test/v1/events/beacon?key=site-key");
    assert.equal(beacons[0]!.body.type, "text/plain;charset=utf-8");
    const sent = (await Promise.all(beacons.map((b) => b.body.text()))).flatMap((t) => JSON.parse(t).events);
    assert.deepEqual(sent.map((e: InteractionEvent) => e.item_id), Array.from({ length: 10 }, (_, i) => `item-${i}`));
    assert.ok(beacons.every((b) => b.body.size <= 1000));
    assert.equal(client.stats.beaconed, 10);
    assert.equal(client.stats.queued, 0);
  });

  it("keeps events the browser refused to beacon", () => {
    const { client } = harness([], { batchSize: 100, sendBeacon: () => false });
    client.track(view);
    client.flushWithBeacon();
    assert.equal(client.stats.queued, 1);
    assert.equal(client.stats.beaconed, 0);
  });
});
