// The SDK against a real gateway and real services (local-cluster) over gRPC-Web.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Code,
  ReservationStage,
  ReservationState,
  TokenError,
  TokenSource,
  isAlreadyExists,
  isPermissionDenied,
  isUnauthenticated,
  codeOf,
  createGatewayTransport,
  createParkingClients,
} from "../src/index.js";
import { clientsFor, cluster, dayAhead, tokensFor } from "./cluster.js";

const MEMBER = 3117n;

function claims(jwt: string): Record<string, unknown> {
  const payload = jwt.split(".")[1];
  assert.ok(payload, "a JWT has three parts");
  return JSON.parse(Buffer.from(payload, "base64url").toString()) as Record<string, unknown>;
}

describe("tokens", () => {
  test("the password grant gives a member's token", async () => {
    const token = await tokensFor("3117").token();
    const c = claims(token);
    assert.equal(c["sub"], "3117");
    assert.equal(c["role"], "employee");
  });

  test("a wrong password is a TokenError with the OAuth2 error, not a token", async () => {
    const tokens = new TokenSource({
      tokenUrl: cluster().token_url,
      grant: { type: "password", username: "3117", password: "not-the-password" },
    });
    await assert.rejects(tokens.token(), (e: unknown) => e instanceof TokenError && e.error === "invalid_grant");
  });

  test("client_credentials with an unknown client is refused as invalid_client", async () => {
    const tokens = new TokenSource({
      tokenUrl: cluster().token_url,
      grant: { type: "client_credentials", clientId: "no-such-service", clientSecret: "wrong" },
    });
    await assert.rejects(tokens.token(), (e: unknown) => e instanceof TokenError && e.error === "invalid_client");
  });

  test("a token near its expiry is refreshed once, however many callers ask", async () => {
    let now = Date.now();
    let requests = 0;
    const counted: typeof fetch = (input, init) => {
      requests += 1;
      return fetch(input, init);
    };
    const tokens = tokensFor("3117", { now: () => now, fetch: counted, refreshBeforeExpirySeconds: 30 });
    const first = await tokens.token();
    const lifetime = (claims(first)["exp"] as number) - (claims(first)["iat"] as number);
    assert.ok(lifetime > 60, `token lifetime ${lifetime}s`);
    assert.equal(await tokens.token(), first, "a fresh token is reused");
    assert.equal(requests, 1);

    // The clock says 20 s are left: inside the 30 s margin.
    now += (lifetime - 20) * 1000;
    const again = await Promise.all([tokens.token(), tokens.token(), tokens.token(), tokens.token()]);
    assert.equal(requests, 2, "concurrent callers share one refresh");
    assert.ok(again.every((t) => t === again[0]));

    // The transport asks the source on every call: one near its expiry makes it fetch a
    // new token, and the call goes out with that one.
    const { parkingLot } = clientsFor(tokens);
    const day = dayAhead(6);
    assert.equal((await parkingLot.getDailyAvailability({ date: day })).date, day);
    assert.equal(requests, 2);
    now += (lifetime - 20) * 1000;
    assert.equal((await parkingLot.getDailyAvailability({ date: day })).date, day);
    assert.equal(requests, 3, "the call's token was refreshed first");
  });

  test("a failed refresh keeps the old token while it holds, and is retried on the next call", async () => {
    let now = Date.now();
    let requests = 0;
    let endpointDown = false;
    const flaky: typeof fetch = (input, init) => {
      requests += 1;
      return endpointDown ? Promise.reject(new TypeError("fetch failed")) : fetch(input, init);
    };
    const tokens = tokensFor("3117", { now: () => now, fetch: flaky, refreshBeforeExpirySeconds: 30 });
    const first = await tokens.token();
    const lifetime = (claims(first)["exp"] as number) - (claims(first)["iat"] as number);

    endpointDown = true;
    now += (lifetime - 20) * 1000;
    assert.equal(await tokens.token(), first, "20 s left: the old token is still good");
    now += 25_000;
    await assert.rejects(tokens.token(), (e: unknown) => e instanceof TokenError && e.status === 0);
    endpointDown = false;
    const renewed = await tokens.token();
    assert.equal(requests, 4);
    assert.equal(claims(renewed)["sub"], "3117");
  });
});

describe("reservations over gRPC-Web", () => {
  test("a member reserves a ticket and watches it until OCCUPIED", async () => {
    const { reservations, status } = clientsFor(tokensFor("3117"));
    const day = dayAhead(3);
    const reserved = await reservations.reserveTicket({ memberId: MEMBER, reservationDate: day, requestId: crypto.randomUUID() });
    assert.equal(reserved.memberId, MEMBER);
    assert.equal(reserved.reservationDate, day);
    assert.equal(reserved.state, ReservationState.REQUESTED);

    const stages: ReservationStage[] = [];
    // Leaving the loop does not end a Connect stream: aborting does (and bounds the wait).
    const watching = new AbortController();
    const timer = setTimeout(() => watching.abort(new Error("no OCCUPIED within 20 s")), 20_000);
    const signal = watching.signal;
    try {
      for await (const update of status.watchReservationStatus({ reservationId: reserved.id }, { signal })) {
        assert.equal(update.reservationId, reserved.id);
        stages.push(update.stage);
        // The watch sends the current status whenever it changes, so a delivery ordered at
        // once may already stand past OCCUPIED; the history must still hold the Occupied.
        if (update.stage >= ReservationStage.STAGE_OCCUPIED) {
          assert.notEqual(update.stage, ReservationStage.STAGE_FULLY_OCCUPIED, "the day had free spaces");
          assert.ok(update.history.some((e) => e.stage === ReservationStage.STAGE_OCCUPIED && e.eventType === "Occupied"));
          assert.ok(update.parkingLotId > 0n, "an occupied reservation names its allocation");
          break;
        }
      }
    } finally {
      clearTimeout(timer);
      watching.abort();
    }
    const last = stages.at(-1);
    assert.ok(
      last === ReservationStage.STAGE_OCCUPIED || last === ReservationStage.STAGE_DELIVERY_REQUESTED,
      `stages seen: ${stages.map((s) => ReservationStage[s]).join(", ")}`,
    );
  });

  test("a second ticket for the same member and day is ALREADY_EXISTS", async () => {
    const { reservations } = clientsFor(tokensFor("3117"));
    const day = dayAhead(4);
    await reservations.reserveTicket({ memberId: MEMBER, reservationDate: day, requestId: crypto.randomUUID() });
    const second = reservations.reserveTicket({ memberId: MEMBER, reservationDate: day, requestId: crypto.randomUUID() });
    await assert.rejects(second, (e: unknown) => isAlreadyExists(e));
  });

  test("a call without a token is UNAUTHENTICATED", async () => {
    const { reservations } = clientsFor(undefined);
    const call = reservations.reserveTicket({ memberId: MEMBER, reservationDate: dayAhead(5), requestId: crypto.randomUUID() });
    await assert.rejects(call, (e: unknown) => isUnauthenticated(e));
  });

  test("a resident may read the lot's availability but not reservations: PERMISSION_DENIED", async () => {
    const { reservations, parkingLot } = clientsFor(tokensFor("rosa"));
    const day = dayAhead(5);
    const availability = await parkingLot.getDailyAvailability({ date: day });
    assert.equal(availability.capacity, cluster().max_parking);
    await assert.rejects(reservations.listReservations({ memberId: MEMBER }), (e: unknown) => isPermissionDenied(e));
    await assert.rejects(
      reservations.reserveTicket({ memberId: MEMBER, reservationDate: day, requestId: crypto.randomUUID() }),
      (e: unknown) => codeOf(e) === Code.PermissionDenied,
    );
  });
});

describe("browsers", () => {
  test("the gateway's CORS lets a page on another origin send what the transport sends", async () => {
    const sent: string[] = [];
    const recording: typeof fetch = (input, init) => {
      new Headers(init?.headers).forEach((_, name) => sent.push(name));
      return fetch(input, init);
    };
    const { gateway_url } = cluster();
    const transport = createGatewayTransport({ baseUrl: gateway_url, tokens: tokensFor("rosa"), fetch: recording });
    await createParkingClients(transport).parkingLot.getDailyAvailability({ date: dayAhead(7) }, { timeoutMs: 5_000 });
    assert.ok(sent.includes("authorization") && sent.includes("x-grpc-web"), `sent: ${sent.join(", ")}`);

    const origin = "http://app.example.test";
    const preflight = await fetch(`${gateway_url}/parking.v1.ParkingLotService/GetDailyAvailability`, {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": sent.join(",") },
    });
    assert.ok(preflight.ok, `preflight: HTTP ${preflight.status}`);
    assert.ok(["*", origin].includes(preflight.headers.get("access-control-allow-origin") ?? ""));
    const allowed = (preflight.headers.get("access-control-allow-headers") ?? "").toLowerCase().split(/\s*,\s*/);
    for (const name of sent) assert.ok(allowed.includes(name), `header ${name} not allowed: ${allowed.join(", ")}`);

    // An error comes back in headers only (trailers-only); the page must be able to read it.
    const refused = await fetch(`${gateway_url}/parking.v1.TicketReservationService/ListReservations`, {
      method: "POST",
      headers: { origin, "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
      body: new Uint8Array([0, 0, 0, 0, 0]),
    });
    const exposed = (refused.headers.get("access-control-expose-headers") ?? "").toLowerCase();
    assert.ok(exposed.includes("grpc-status") && exposed.includes("grpc-message"), `exposed: ${exposed}`);
    assert.equal(refused.headers.get("grpc-status"), String(Code.Unauthenticated));
  });
});

describe("community", () => {
  test("community calls take the gateway's community route: UNAVAILABLE while no community service runs", async () => {
    // local-cluster leaves the community service to its caller (COMMUNITY_PORT); none runs here.
    const { community } = clientsFor(tokensFor("rosa"));
    const watch = async (): Promise<void> => {
      for await (const booking of community.watchEveningBooking({ bookingId: "no-such-booking" }, { timeoutMs: 10_000 })) {
        assert.fail(`no community service runs, yet a booking came: ${booking.bookingId}`);
      }
    };
    await assert.rejects(watch(), (e: unknown) => codeOf(e) === Code.Unavailable);
    await assert.rejects(community.listEveningOffers({}, { timeoutMs: 10_000 }), (e: unknown) => codeOf(e) === Code.Unavailable);
  });
});
