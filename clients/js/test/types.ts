// Compiled by `tsc -p tsconfig.json` (never run): the declarations in use, as
// an application would write them. A declaration that drifts from this breaks CI.

import { Client, publish, AuthError, ForbiddenError, SwitchboardError, type MessageEvent, type StateEvent } from "../switchboard.js";

interface Progress {
  type: string;
  data: { step: number };
}

export async function example(token: string): Promise<number> {
  const controller = new AbortController();
  const client = new Client({
    url: ["wss://gw-1.example/ws", "https://gw-2.example"],
    token,
    getToken: async ({ reason }) => (reason === "refused" ? "new" : "renewed"),
    signal: controller.signal,
    pingIntervalMs: 10000,
  });
  client.on("state", (s: StateEvent) => console.log(s.state, s.attempt ?? 0, s.delayMs ?? 0, s.replica));
  client.on("error", (e) => {
    if (e instanceof AuthError) console.log("sign in again", e.code, e.status);
    else if (e instanceof ForbiddenError) console.log("not allowed", e.channel);
  });
  const sub = client.subscribe<Progress>("council:req-1", {
    since: { offset: 41, epoch: "Xk3pQ9aZ2m" },
    filters: { "data.step": { min: 2 }, type: { in: ["analysis_started", "done"] } },
    ack: "manual",
    shouldResume: ({ downMs, closeCode }) => closeCode !== 4000 && downMs < 60000,
  });
  sub.on("message", (m: MessageEvent<Progress>) => console.log(m.offset, m.data.data.step, m.replayed));
  sub.on("snapshot", (s) => console.log(s.offset, s.data.type, s.start));
  sub.on("resync", (r) => console.log(r.reason === "not_recovered", r.epoch));
  sub.on("history", (h) => console.log(h.offset));
  const connected = await client.connect();
  console.log(connected.session, connected.resumed);
  const subscribed = await sub.ready;
  await sub.ack(subscribed.offset);
  await sub.backfill(10);
  for await (const event of sub) {
    if ("start" in event) continue;
    if (event.data.type === "done") break;
  }
  const published = await client.publish("council:req-1", { type: "done", data: { step: 3 } }, { snapshot: true });
  await publish("http://gw:8080", "dash:alerts", { level: "warn" }, { token });
  try {
    await sub.unsubscribe();
  } catch (e) {
    if (e instanceof SwitchboardError) console.log(e.code, e.closeCode);
  }
  controller.abort();
  return published.offset;
}
