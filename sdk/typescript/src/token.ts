// Tokens from the gateway's OAuth2 endpoint (POST /oauth2/token, RFC 6749): the password
// grant for people, client_credentials for programs. A TokenSource keeps the token it got
// and asks for a new one shortly before it expires; callers that ask while a request is
// under way all wait for that one request.

/** How the gateway should identify the caller. */
export type Grant =
  | { type: "password"; username: string; password: string }
  | { type: "client_credentials"; clientId: string; clientSecret: string };

export interface TokenSourceOptions {
  /** The gateway's token endpoint, e.g. "http://127.0.0.1:8080/oauth2/token". */
  tokenUrl: string;
  grant: Grant;
  /** Ask for a new token this many seconds before the current one expires (default 30). */
  refreshBeforeExpirySeconds?: number;
  /** Milliseconds since the epoch; tests give their own clock. */
  now?: () => number;
  /** The fetch to use (default globalThis.fetch). */
  fetch?: typeof globalThis.fetch;
}

/** The token endpoint refused or could not be read. */
export class TokenError extends Error {
  override readonly name = "TokenError";
  constructor(
    message: string,
    /** HTTP status, 0 when the endpoint was not reached. */
    readonly status: number,
    /** The OAuth2 error code, e.g. "invalid_grant", when the gateway sent one. */
    readonly error?: string,
  ) {
    super(message);
  }
}

interface Cached {
  accessToken: string;
  /** When to ask for the next one (ms since the epoch). */
  refreshAt: number;
  expiresAt: number;
}

export class TokenSource {
  private readonly tokenUrl: string;
  private readonly grant: Grant;
  private readonly marginMs: number;
  private readonly now: () => number;
  private readonly fetch: typeof globalThis.fetch;
  private cached: Cached | undefined;
  private pending: Promise<Cached> | undefined;

  constructor(options: TokenSourceOptions) {
    this.tokenUrl = options.tokenUrl;
    this.grant = options.grant;
    this.marginMs = (options.refreshBeforeExpirySeconds ?? 30) * 1000;
    this.now = options.now ?? Date.now;
    // Called as a plain function: a browser's fetch refuses any other `this`.
    const fetch = options.fetch ?? globalThis.fetch;
    this.fetch = (input, init) => fetch(input, init);
  }

  /**
   * The cached token while it is not near its expiry, else a new one. When the endpoint
   * fails, the old token is returned as long as it has not expired, else the error.
   */
  async token(): Promise<string> {
    const cached = this.cached;
    if (cached !== undefined && this.now() < cached.refreshAt) {
      return cached.accessToken;
    }
    if (this.pending === undefined) {
      this.pending = this.request().finally(() => {
        this.pending = undefined;
      });
    }
    try {
      return (await this.pending).accessToken;
    } catch (error) {
      // The endpoint failed while the old token still holds: use it, ask again next call.
      if (cached !== undefined && this.now() < cached.expiresAt) return cached.accessToken;
      throw error;
    }
  }

  /** Forget the cached token, e.g. after the gateway refused it. */
  invalidate(): void {
    this.cached = undefined;
  }

  private async request(): Promise<Cached> {
    const form = new URLSearchParams();
    const headers: Record<string, string> = {
      "content-type": "application/x-www-form-urlencoded",
      accept: "application/json",
    };
    if (this.grant.type === "password") {
      form.set("grant_type", "password");
      form.set("username", this.grant.username);
      form.set("password", this.grant.password);
    } else {
      form.set("grant_type", "client_credentials");
      // RFC 6749 2.3.1: each part form-encoded before Basic's base64.
      const pair = `${encodeURIComponent(this.grant.clientId)}:${encodeURIComponent(this.grant.clientSecret)}`;
      headers["authorization"] = `Basic ${btoa(pair)}`;
    }
    const asked = this.now();
    let response: Response;
    try {
      response = await this.fetch(this.tokenUrl, { method: "POST", headers, body: form.toString() });
    } catch (cause) {
      throw new TokenError(`token endpoint ${this.tokenUrl} not reached: ${String(cause)}`, 0);
    }
    const body = (await response.json().catch(() => undefined)) as Record<string, unknown> | undefined;
    if (!response.ok) {
      const error = typeof body?.["error"] === "string" ? body["error"] : undefined;
      const description = typeof body?.["error_description"] === "string" ? body["error_description"] : "";
      throw new TokenError(
        `token refused (HTTP ${response.status}${error ? `, ${error}` : ""})${description ? `: ${description}` : ""}`,
        response.status,
        error,
      );
    }
    const accessToken = body?.["access_token"];
    const expiresIn = body?.["expires_in"];
    if (typeof accessToken !== "string" || typeof expiresIn !== "number") {
      throw new TokenError("token endpoint answered without access_token and expires_in", response.status);
    }
    // Counted from when we asked, so time spent on the way only makes us refresh earlier;
    // a lifetime shorter than twice the margin is refreshed at its half.
    const lifetimeMs = expiresIn * 1000;
    this.cached = {
      accessToken,
      refreshAt: asked + Math.max(lifetimeMs - this.marginMs, lifetimeMs / 2),
      expiresAt: asked + lifetimeMs,
    };
    return this.cached;
  }
}
