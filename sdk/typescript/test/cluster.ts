// What the test files know about the running local-cluster (started by run.ts).
import { createGatewayTransport, createParkingClients, TokenSource, type ParkingClients } from "../src/index.js";

export interface Cluster {
  gateway_url: string;
  token_url: string;
  max_parking: number;
  users: Record<string, { role: string; password: string }>;
}

export function cluster(): Cluster {
  const line = process.env["PARKING_CLUSTER"];
  if (line === undefined) throw new Error("PARKING_CLUSTER is not set: run the tests with `npm test`");
  return JSON.parse(line) as Cluster;
}

export function tokensFor(user: string, options: Partial<ConstructorParameters<typeof TokenSource>[0]> = {}): TokenSource {
  const c = cluster();
  const account = c.users[user];
  if (account === undefined) throw new Error(`local-cluster has no user ${user}`);
  return new TokenSource({
    tokenUrl: c.token_url,
    grant: { type: "password", username: user, password: account.password },
    ...options,
  });
}

export function clientsFor(tokens: TokenSource | undefined): ParkingClients {
  return createParkingClients(createGatewayTransport({ baseUrl: cluster().gateway_url, ...(tokens ? { tokens } : {}) }));
}

/** A day `days` after today, "YYYY-MM-DD": in the future in any time zone for days >= 2. */
export function dayAhead(days: number): string {
  return new Date(Date.now() + days * 86_400_000).toISOString().slice(0, 10);
}
