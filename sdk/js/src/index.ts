export { FreshrankClient } from "./client.js";
export type { ClientOptions, ClientStats, Rejection, TrackedEvent } from "./client.js";
export { EVENT_TYPE_SYMBOLS, INTERACTION_EVENT_FIELDS } from "./generated/interaction-event.js";
export type { EventType, InteractionEvent } from "./generated/interaction-event.js";
