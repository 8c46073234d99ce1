// Type declarations of switchboard.js (the client of switchboard's native
// protocol, docs/PROTOCOL.md). Written by hand; `tsc --noEmit` checks them in CI.

export declare const VERSION: string;

/** Any JSON value, as published. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

// ------------------------------------------------------------------ errors

export interface ErrorDetails {
  code?: string;
  status?: number;
  channel?: string;
  closeCode?: number;
  cause?: unknown;
}

/** Every error the client raises or emits. */
export declare class SwitchboardError extends Error {
  constructor(message: string, details?: ErrorDetails);
  /** The protocol's code (`forbidden`, `invalid_token`, `bad_filter`, …) or the client's (`closed`, `not_connected`, …). */
  readonly code: string;
  /** HTTP status, when the error is an HTTP answer. */
  readonly status?: number;
  /** The channel concerned. */
  readonly channel?: string;
  /** The WebSocket close code that ended the connection. */
  readonly closeCode?: number;
}
/** The token is missing, refused or expired (401, `unauthorized`, `token_expired`, close 4001). */
export declare class AuthError extends SwitchboardError {}
/** The token does not allow this channel, publishing, or connecting (403, `forbidden`). */
export declare class ForbiddenError extends SwitchboardError {}
/** The client was closed, or the gateway ended it for good (4004, 1002, 1007, 1009). */
export declare class ClosedError extends SwitchboardError {}
/** The publish API refused the message (400, 409, 413, 503 …) or could not be reached. */
export declare class PublishError extends SwitchboardError {}

// ------------------------------------------------------------------ WebSocket

/** What the client needs of a WebSocket: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export type FetchLike = (
  url: string,
  init?: { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<{ ok: boolean; status: number; statusText: string; json(): Promise<any> }>;

// ------------------------------------------------------------------ events

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "offline" | "closed";

export interface StateEvent {
  state: ConnectionState;
  /** The replica of the current (or last) connection. */
  replica: string | null;
  /** Reconnection attempt (connecting, reconnecting). */
  attempt?: number;
  /** Delay before the next attempt (reconnecting). */
  delayMs?: number;
  /** Why, in words (reconnecting, offline, closed). */
  reason?: string;
  /** The close code that ended the last connection (reconnecting). */
  code?: number;
  /** Whether the session was restored (connected). */
  resumed?: boolean;
  connectionId?: string | null;
  /** Why the client stopped (closed by an error). */
  error?: SwitchboardError;
}

export interface ConnectedEvent {
  connectionId: string | null;
  replica: string | null;
  /** The session id (`?session=` on the next connection). */
  session: string | null;
  /** Whether `?session=` restored the session's subscriptions. */
  resumed: boolean;
  /** The token's `sub` (with authentication). */
  user: string | null;
  heartbeatInterval?: number;
}

export interface SubscribedEvent {
  channel: string;
  epoch: string;
  /** The channel's newest offset: live messages continue after it. */
  offset: number;
  /** Answer to a `since`: true when every message after it follows. */
  recovered?: boolean;
  /** Restored by the gateway from the session (`?session=`). */
  restored: boolean;
}

export interface MessageEvent<T = Json> {
  channel: string;
  /** Absent for a plain Redis PUBLISH (not resumable). */
  offset: number | undefined;
  epoch: string | null;
  data: T;
  /** Size of the frame in characters. */
  size: number;
  /** With `delta: "fossil"`: the size of the message whole, in bytes (`size` is the delta's). */
  fullSize?: number;
  /** Read from history (a resume), not live. */
  replayed: boolean;
}

export interface SnapshotEvent<T = Json> {
  channel: string;
  offset: number;
  epoch: string | null;
  data: T;
  size: number;
  /** The snapshot a subscription starts from (false: the answer to refresh()). */
  start: boolean;
}

export interface HistoryEvent<T = Json> {
  channel: string;
  offset: number;
  epoch: string | null;
  data: T;
  size: number;
}

/**
 * The channel's continuity was lost: replace your state with the snapshot and
 * messages that follow. `not_recovered`: the history could not cover the gap;
 * `new_epoch`: the channel's history was lost; `restart`: shouldResume chose it.
 */
export interface ResyncEvent {
  channel: string;
  reason: "not_recovered" | "new_epoch" | "restart";
  epoch: string;
}

export interface UnsubscribedEvent {
  channel: string;
  /** null when asked for; `forbidden` when a refreshed token no longer allows it; an error code when refused. */
  reason: string | null;
}

export interface TokenRefreshedEvent {
  /** The new token's expiry, Unix seconds. */
  expiresAt: number;
}

export interface ClientEvents {
  state: StateEvent;
  connected: ConnectedEvent;
  error: SwitchboardError;
  token_refreshed: TokenRefreshedEvent;
}

export interface SubscriptionEvents<T = Json> {
  message: MessageEvent<T>;
  snapshot: SnapshotEvent<T>;
  history: HistoryEvent<T>;
  subscribed: SubscribedEvent;
  resync: ResyncEvent;
  unsubscribed: UnsubscribedEvent;
  error: SwitchboardError;
}

declare class Emitter<Events> {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): void;
  once<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): () => void;
  listenerCount(type: keyof Events): number;
}

// ------------------------------------------------------------------ options

export interface Since {
  offset: number;
  epoch: string;
}

/** A filter condition: a value (equal), or a range, or a set. */
export type Condition = Json | { eq: Json } | { min?: number; max?: number } | { in: Json[] };
/** Dotted paths into `data`, each with a condition; all must hold. */
export type Filters = Record<string, Condition>;

export interface ResumeInfo {
  channel: string;
  offset: number;
  epoch: string | null;
  /** The close code that ended the previous connection. */
  closeCode: number;
  /** How long the client was disconnected. */
  downMs: number;
}

export interface SubscribeOptions {
  /** Start after this offset of this epoch (history first) instead of at the newest message. */
  since?: Since;
  filters?: Filters;
  /**
   * `"fossil"`: the gateway sends each message after the first as a fossil
   * delta against the previous one (a fraction of the bytes for snapshots
   * resent every few seconds); the client decodes it, events carry the data.
   */
  delta?: "fossil";
  /** `auto` (default): acknowledge what the listeners were given, every ackIntervalMs; `manual`: call ack(). */
  ack?: "auto" | "manual";
  /** Asked before resuming after a reconnection; false starts the channel over from its snapshot. */
  shouldResume?: (info: ResumeInfo) => boolean;
  /** Aborting it unsubscribes. */
  signal?: AbortSignal;
}

export interface TokenRequest {
  /** `expiring`: before the current one expires; `refused`: the gateway refused or expired it. */
  reason: "expiring" | "refused";
  token: string | null;
}

export interface ClientOptions {
  /** Gateway URL(s): `ws(s)://host/ws`, or `http(s)://host` / `ws(s)://host` (then `/ws`); several are tried in turn. */
  url: string | string[];
  /** JWT (sent as the `bearer.<token>` subprotocol); none with a `--no-auth` gateway. */
  token?: string | null;
  /** Gives a fresh token: called before the current one expires, and when the gateway refuses it. */
  getToken?: (request: TokenRequest) => string | Promise<string>;
  /** A WebSocket constructor where there is no global one (Node < 22: the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** fetch, for publish() and for diagnosing refused connections (default: the global one). */
  fetch?: FetchLike;
  /** Aborting it closes the client. */
  signal?: AbortSignal;
  /** A session id to resume (a previous client's `session`), or false to never use sessions. */
  session?: string | boolean;
  /** Full-jitter backoff: random(0, min(cap, base × 2^attempt)); defaults 500 and 30000. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** A connection up this long resets the attempt count (60000). */
  stableMs?: number;
  /** Added to the backoff after a 1008 (message flood) close (60000). */
  floodDelayMs?: number;
  /** Application ping interval; three silent intervals (2 × + 5 s) count as a lost connection (15000; 0: off). */
  pingIntervalMs?: number;
  /** getToken is called this long before the token's `exp` (at most half its remaining life; 30000). */
  refreshBeforeMs?: number;
  /** Automatic acknowledgements are sent this often (1000), at most maxAcksPerInterval channels each time (8). */
  ackIntervalMs?: number;
  maxAcksPerInterval?: number;
  /** Ask `GET /api/v1/whoami` why a connection failed before its greeting (true). */
  checkAuth?: boolean;
}

// ------------------------------------------------------------------ classes

export interface Published {
  channel: string;
  offset: number;
  epoch: string;
}

export interface PublishOptions {
  token?: string | null;
  /** Also store the message as the channel's snapshot. */
  snapshot?: boolean;
  fetch?: FetchLike;
  signal?: AbortSignal;
}

export interface Acked {
  type: "acked";
  channel: string;
  offset: number;
}

export declare class Subscription<T = Json> extends Emitter<SubscriptionEvents<T>> {
  readonly client: Client;
  readonly channel: string;
  readonly filters: Filters | null;
  /** The delta format asked for, if any. */
  readonly delta: "fossil" | null;
  readonly state: "pending" | "subscribed" | "unsubscribed" | "failed";
  /** Epoch of `offset`. */
  readonly epoch: string | null;
  /** The newest offset delivered (or where the subscription started). */
  readonly offset: number;
  /** Why the subscription failed. */
  readonly error: SwitchboardError | null;
  /** Resolves with the first `subscribed`; rejects with ForbiddenError, … when refused. */
  readonly ready: Promise<SubscribedEvent>;
  /** Acknowledges processing up to `offset` (default: the newest delivered). */
  ack(offset?: number): Promise<Acked>;
  unsubscribe(): Promise<void>;
  /** Asks for the snapshot again (a `snapshot` event with start false). */
  refresh(): Promise<void>;
  /** Up to `count` messages from before the oldest delivered (or the start snapshot), as `history` events. */
  backfill(count: number): Promise<void>;
  /** Messages and snapshots, in order, until unsubscribed. */
  [Symbol.asyncIterator](): AsyncIterator<MessageEvent<T> | SnapshotEvent<T>>;
}

export declare class Client extends Emitter<ClientEvents> {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  /** The session id (kept across connections; give it to a new Client to resume). */
  readonly session: string | null;
  readonly replica: string | null;
  readonly connectionId: string | null;
  /** The WebSocket extensions of the current connection (`permessage-deflate; …` when compressed; "" where the WebSocket does not say). */
  readonly extensions: string;
  readonly user: string | null;
  readonly token: string | null;
  /** Why the client stopped for good. */
  readonly error: SwitchboardError | null;
  /** Starts the client; resolves with the first connection; rejects only if it stops for good. */
  connect(): Promise<ConnectedEvent>;
  subscribe<T = Json>(channel: string, options?: SubscribeOptions): Subscription<T>;
  subscription(channel: string): Subscription | null;
  ping(): Promise<{ type: "pong"; timestamp: string }>;
  /** Replaces the token (sent with `refresh_token` when connected: same user only). */
  setToken(token: string): Promise<unknown>;
  /** Publishes over the HTTP API of the gateway (needs `websocket:publish`). */
  publish(channel: string, data: unknown, options?: { snapshot?: boolean; signal?: AbortSignal }): Promise<Published>;
  /** Closes for good; pending promises reject with ClosedError. */
  close(): void;
}

/** Publishes through `POST /api/v1/publish` of the gateway at `url` (`http://gw:8080`). */
export declare function publish(url: string, channel: string, data: unknown, options?: PublishOptions): Promise<Published>;

/** The `exp` of a JWT in milliseconds (not verified), or null. */
/** Applies a fossil delta to `base` (the format of `delta: "fossil"` subscriptions); throws a SwitchboardError (`bad_delta`) on a malformed delta or the wrong base. */
export declare function applyFossilDelta(base: Uint8Array, delta: Uint8Array): Uint8Array;

export declare function tokenExpiry(token: string): number | null;
