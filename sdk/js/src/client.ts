/**
 * FreshrankClient: interaction events from a web page to the feed API's HTTP collector.
 *
 * Guarantees: events wait in a bounded in-memory queue (full: the oldest is dropped and
 * counted in `stats.dropped`); they leave in batches (POST /v1/events with X-API-Key);
 * a batch refused with 429, 5xx or a network error is retried with exponential backoff
 * and full jitter (honouring Retry-After), events the collector rejects are reported
 * through `onRejected` and never resent; on page hide the queue goes out with
 * `navigator.sendBeacon` (POST /v1/events/beacon, text/plain, key in the query: a beacon
 * can set no header). What this SDK cannot guarantee: delivery after the tab is gone
 * when the beacon is refused by the browser, or across page loads (no persistence).
 */

import type { EventType, InteractionEvent } from "./generated/interaction-event.js";

/** An event as the page tracks it: id and time are filled in when missing. */
export type TrackedEvent = Omit<InteractionEvent, "event_id" | "event_time"> &
  Partial<Pick<InteractionEvent, "event_id" | "event_time">>;

/** One event the collector refused, with its field and reason (not resent). */
export interface Rejection {
  event: InteractionEvent;
  field: string;
  reason: string;
}

export interface ClientStats {
  /** Events waiting in the queue (including a batch in flight). */
  queued: number;
  /** Events the collector accepted. */
  accepted: number;
  /** Events the collector rejected with a reason. */
  rejected: number;
  /** Events dropped because the queue was full (oldest first). */
  dropped: number;
  /** Batches retried after 429, 5xx or a network error. */
  retries: number;
  /** Events handed to navigator.sendBeacon on page hide. */
  beaconed: number;
}

export interface ClientOptions {
  /** Base URL of the feed API, e.g. "https://feed.example.com". */
  endpoint: string;
  /** A key of FRESHRANK_SERVE_API_KEYS (a public "write key" for this site). */
  apiKey: string;
  /** Events per request (the collector takes at most 500). Default 50. */
  batchSize?: number;
  /** A batch leaves at most this long after its first event. Default 1000 ms. */
  flushIntervalMs?: number;
  /** Most events kept while the collector cannot be reached. Default 1000. */
  maxQueue?: number;
  /** First retry delay; doubles per attempt, with full jitter. Default 500 ms. */
  retryBaseMs?: number;
  /** Longest retry delay. Default 30 000 ms. */
  retryMaxMs?: number;
  /** Largest beacon body; browsers refuse more than 64 KiB in flight. Default 60 000 bytes. */
  beaconMaxBytes?: number;
  /** Called with events the collector refused, and why. */
  onRejected?: (rejections: Rejection[]) => void;
  /** Called with a request error that will not be retried (401, 400, 413). */
  onError?: (error: Error) => void;
  /** Listen for page hide (visibilitychange/pagehide) and beacon the queue. Default true in a browser. */
  flushOnPageHide?: boolean;
  // Injectable for tests; the browser's by default.
  fetch?: typeof fetch;
  sendBeacon?: (url: string, body: Blob) => boolean;
  now?: () => number;
  random?: () => number;
  newId?: () => string;
  setTimer?: (callback: () => void, ms: number) => unknown;
  clearTimer?: (timer: unknown) => void;
}

interface CollectorVerdict {
  accepted: number;
  rejected: { index: number; event_id: string | null; field: string; reason: string }[];
}

const RESEND_PREFIX = "not accepted:";

export class FreshrankClient {
  private queue: InteractionEvent[] = [];
  private readonly options: Required<Omit<ClientOptions, "onRejected" | "onError" | "sendBeacon">> &
    Pick<ClientOptions, "onRejected" | "onError" | "sendBeacon">;
  private timer: unknown = null;
  private inFlight: Promise<void> | null = null;
  private attempt = 0;
  private closed = false;
  private readonly counters = { accepted: 0, rejected: 0, dropped: 0, retries: 0, beaconed: 0 };
  private readonly onHide = (): void => {
    if (typeof document === "undefined" || document.visibilityState === "hidden") this.flushWithBeacon();
  };

  constructor(options: ClientOptions) {
    if (!options.endpoint) throw new Error("FreshrankClient: endpoint is required");
    if (!options.apiKey) throw new Error("FreshrankClient: apiKey is required");
    const inBrowser = typeof window !== "undefined" && typeof document !== "undefined";
    this.options = {
      batchSize: 50,
      flushIntervalMs: 1000,
      maxQueue: 1000,
      retryBaseMs: 500,
      retryMaxMs: 30_000,
      beaconMaxBytes: 60_000,
      flushOnPageHide: inBrowser,
      fetch: (...args) => globalThis.fetch(...args),
      sendBeacon:
        typeof navigator !== "undefined" && typeof navigator.sendBeacon === "function"
          ? (url, body) => navigator.sendBeacon(url, body)
          : undefined,
      now: () => Date.now(),
      random: Math.random,
      newId: defaultId,
      setTimer: (callback, ms) => setTimeout(callback, ms),
      clearTimer: (timer) => clearTimeout(timer as ReturnType<typeof setTimeout>),
      ...options,
      endpoint: options.endpoint.replace(/\/+$/, ""),
    };
    if (this.options.batchSize < 1 || this.options.batchSize > 500) {
      throw new Error("FreshrankClient: batchSize must be between 1 and 500 (the collector's limit)");
    }
    if (this.options.flushOnPageHide && inBrowser) {
      document.addEventListener("visibilitychange", this.onHide);
      window.addEventListener("pagehide", this.onHide);
    }
  }

  get stats(): ClientStats {
    return { queued: this.queue.length, ...this.counters };
  }

  /** Queue one event; returns the event as it will be sent (with its id and time). */
  track(event: TrackedEvent): InteractionEvent {
    if (this.closed) throw new Error("FreshrankClient: track() after close()");
    const full: InteractionEvent = {
      ...event,
      event_id: event.event_id ?? this.options.newId(),
      event_time: event.event_time ?? this.options.now(),
    };
    this.queue.push(full);
    while (this.queue.length > this.options.maxQueue) {
      this.queue.shift();
      this.counters.dropped += 1;
    }
    if (this.queue.length >= this.options.batchSize) {
      void this.flush();
    } else {
      this.schedule(this.options.flushIntervalMs);
    }
    return full;
  }

  /** Send what is queued now, batch by batch; resolves when the queue is empty or a retry is scheduled. */
  flush(): Promise<void> {
    if (this.inFlight === null) {
      this.inFlight = this.drain().finally(() => {
        this.inFlight = null;
      });
    }
    return this.inFlight;
  }

  /** Hand the whole queue to navigator.sendBeacon (page hide). Events the browser refuses stay queued. */
  flushWithBeacon(): void {
    const send = this.options.sendBeacon;
    if (send === undefined || this.queue.length === 0) return;
    const url = `${this.options.endpoint}/v1/events/beacon?key=${encodeURIComponent(this.options.apiKey)}`;
    // A batch in flight is still in the queue; beaconing it too would at worst send it twice,
    // and the stream job deduplicates on event_id. Losing it is worse.
    while (this.queue.length > 0) {
      const batch = this.beaconBatch();
      const body = new Blob([JSON.stringify({ events: batch })], { type: "text/plain;charset=UTF-8" });
      if (!send(url, body)) return;
      this.queue.splice(0, batch.length);
      this.counters.beaconed += batch.length;
    }
  }

  /** Stop listening for page hide and send what is left. */
  async close(): Promise<void> {
    this.closed = true;
    if (typeof document !== "undefined" && typeof window !== "undefined") {
      document.removeEventListener("visibilitychange", this.onHide);
      window.removeEventListener("pagehide", this.onHide);
    }
    await this.flush();
  }

  private beaconBatch(): InteractionEvent[] {
    const batch: InteractionEvent[] = [];
    let bytes = 12;
    for (const event of this.queue) {
      const size = new TextEncoder().encode(JSON.stringify(event)).length + 1;
      if (batch.length > 0 && (bytes + size > this.options.beaconMaxBytes || batch.length >= this.options.batchSize)) {
        break;
      }
      batch.push(event);
      bytes += size;
    }
    return batch;
  }

  private schedule(delayMs: number): void {
    if (this.timer !== null) return;
    this.timer = this.options.setTimer(() => {
      this.timer = null;
      void this.flush();
    }, delayMs);
  }

  private async drain(): Promise<void> {
    if (this.timer !== null) {
      this.options.clearTimer(this.timer);
      this.timer = null;
    }
    while (this.queue.length > 0) {
      const batch = this.queue.slice(0, this.options.batchSize);
      const outcome = await this.send(batch);
      if (outcome === "retry") {
        this.counters.retries += 1;
        this.schedule(this.backoff(this.retryAfterMs));
        this.attempt += 1;
        return;
      }
      this.attempt = 0;
    }
  }

  private retryAfterMs: number | null = null;

  /** Exponential backoff with full jitter; a server's Retry-After is the floor. */
  private backoff(retryAfterMs: number | null): number {
    const ceiling = Math.min(this.options.retryMaxMs, this.options.retryBaseMs * 2 ** this.attempt);
    const jittered = Math.floor(this.options.random() * ceiling);
    return Math.max(jittered, retryAfterMs ?? 0);
  }

  private async send(batch: InteractionEvent[]): Promise<"done" | "retry"> {
    this.retryAfterMs = null;
    let response: Response;
    try {
      response = await this.options.fetch(`${this.options.endpoint}/v1/events`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-API-Key": this.options.apiKey },
        body: JSON.stringify({ events: batch }),
        keepalive: false,
      });
    } catch {
      return "retry"; // network error, CORS refusal, offline
    }
    if (response.status === 429 || response.status >= 500) {
      const header = response.headers.get("Retry-After");
      const seconds = header === null ? NaN : Number(header);
      this.retryAfterMs = Number.isFinite(seconds) ? seconds * 1000 : null;
      return "retry";
    }
    if (response.status === 202 || response.status === 422) {
      const verdict = (await response.json().catch(() => null)) as (CollectorVerdict & { error?: string }) | null;
      if (response.status === 422 && verdict?.error !== "events_rejected") {
        this.fail(batch, new Error(`collector refused the batch (422): ${JSON.stringify(verdict)}`));
        return "done";
      }
      return this.settle(batch, verdict) ? "retry" : "done";
    }
    const text = await response.text().catch(() => "");
    this.fail(batch, new Error(`collector answered ${response.status}: ${text}`));
    return "done";
  }

  /** Take the batch's events out of the queue (a beacon may have taken some already). */
  private remove(batch: InteractionEvent[]): void {
    const sent = new Set(batch);
    this.queue = this.queue.filter((event) => !sent.has(event));
  }

  /** Settle a batch; true if the collector asked to resend some events later (backpressure). */
  private settle(batch: InteractionEvent[], verdict: CollectorVerdict | null): boolean {
    this.remove(batch);
    const rejected = verdict?.rejected ?? [];
    const resend: InteractionEvent[] = [];
    const refusals: Rejection[] = [];
    for (const item of rejected) {
      const event = batch[item.index];
      if (event === undefined) continue;
      if (item.field === "event" && item.reason.startsWith(RESEND_PREFIX)) resend.push(event);
      else refusals.push({ event, field: item.field, reason: item.reason });
    }
    this.counters.accepted += batch.length - refusals.length - resend.length;
    this.counters.rejected += refusals.length;
    if (resend.length > 0) this.queue.unshift(...resend);
    if (refusals.length > 0) this.options.onRejected?.(refusals);
    return resend.length > 0;
  }

  private fail(batch: InteractionEvent[], error: Error): void {
    this.remove(batch);
    this.counters.rejected += batch.length;
    this.options.onError?.(error);
  }
}

function defaultId(): string {
  const cryptoApi = globalThis.crypto;
  if (cryptoApi !== undefined && typeof cryptoApi.randomUUID === "function") return cryptoApi.randomUUID();
  const bytes = new Uint8Array(16);
  if (cryptoApi !== undefined && typeof cryptoApi.getRandomValues === "function") cryptoApi.getRandomValues(bytes);
  else for (let i = 0; i < 16; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export type { EventType, InteractionEvent };
