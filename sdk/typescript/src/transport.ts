// A transport to the gateway over gRPC-Web (what browsers can speak; Node's fetch too),
// with the caller's bearer token put on every call, unary and streaming alike.
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { TokenSource } from "./token.js";

export interface GatewayTransportOptions {
  /** The gateway's base URL, e.g. "http://127.0.0.1:8080". */
  baseUrl: string;
  /**
   * Where the bearer token comes from: a TokenSource, or any function giving a token.
   * Without it calls go out with no token (and every backend answers UNAUTHENTICATED).
   */
  tokens?: TokenSource | (() => Promise<string> | string);
  /** More interceptors, run after the one that adds the token. */
  interceptors?: Interceptor[];
  /** The fetch to use (default globalThis.fetch). */
  fetch?: typeof globalThis.fetch;
}

/** Adds `authorization: Bearer <token>`, asking the source on each call so a refreshed token is used. */
export function bearerToken(tokens: TokenSource | (() => Promise<string> | string)): Interceptor {
  const get = typeof tokens === "function" ? tokens : () => tokens.token();
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${await get()}`);
    return next(request);
  };
}

export function createGatewayTransport(options: GatewayTransportOptions): Transport {
  const interceptors = options.tokens === undefined ? [] : [bearerToken(options.tokens)];
  return createGrpcWebTransport({
    baseUrl: options.baseUrl,
    interceptors: [...interceptors, ...(options.interceptors ?? [])],
    ...(options.fetch === undefined ? {} : { fetch: options.fetch }),
  });
}
