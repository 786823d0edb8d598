//! Credentials between services: every call a backend serves carries a bearer token it
//! verifies itself, whatever the network (zero trust).
//!
//! - People's calls: the gateway checks the user's JWT and forwards it unchanged; each
//!   backend checks it again against the gateway's published keys ([`Verifier`]: the JWK
//!   set at `JWKS_URL`, cached, fetched again when a token names a key it does not know,
//!   so a new key can sign as soon as it is published: rotation with no downtime).
//! - Services' own calls (parking-lot's CancelDelivery): the calling service gets a token
//!   of its own at the token endpoint with the client_credentials grant
//!   ([`ServiceCredentials`]); its role ([`Role::Service`]) says what it may do.
//! - [`AuthLayer`] refuses every call without a valid token (UNAUTHENTICATED) before it
//!   reaches a handler, and hands the handler the verified [`Caller`]. Only the health
//!   checks (probes) and server reflection (the public contract) need no token.

use crate::identity::{Caller, Role};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;

/// What a token says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// A user's login (an employee's member id) or `client:<id>` for a program.
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

/// Why a token was refused; the message goes back to the caller as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum Refused {
    #[error("missing access token: send `authorization: Bearer <token>` (get one at POST /oauth2/token)")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("access token expired; log in again")]
    Expired,
    #[error("access token not signed by a key this deployment publishes")]
    UnknownKey,
    #[error("access token algorithm not accepted (EdDSA only)")]
    Algorithm,
    #[error("access token signature does not match")]
    Signature,
    #[error("access token is for another audience")]
    Audience,
    #[error("access token is from another issuer")]
    Issuer,
    #[error("access token is malformed")]
    Malformed,
}

impl From<Refused> for Status {
    fn from(refused: Refused) -> Status {
        Status::unauthenticated(refused.to_string())
    }
}

/// The token in an `authorization` header value (`Bearer <token>`, scheme in any case).
pub fn bearer(authorization: Option<&http::HeaderValue>) -> Result<&str, Refused> {
    let value = authorization.ok_or(Refused::Missing)?;
    let value = value.to_str().map_err(|_| Refused::NotBearer)?;
    // The scheme is case-insensitive (RFC 9110 11.1).
    let (scheme, token) = value.split_once(' ').ok_or(Refused::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refused::NotBearer);
    }
    Ok(token.trim())
}

/// The public keys tokens may be signed with, by key id, and what else a token must say.
#[derive(Clone)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl KeySet {
    /// An empty set for `issuer` and `audience`: refuses every token until keys arrive.
    pub fn empty(issuer: &str, audience: &str) -> KeySet {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Clock skew between the machines that sign and check.
        validation.leeway = 5;
        KeySet {
            keys: HashMap::new(),
            validation,
        }
    }

    /// The Ed25519 signing keys of a JWK set that have a key id; other keys are skipped
    /// (only EdDSA is accepted, so they could never verify anything).
    pub fn from_jwks(jwks: &JwkSet, issuer: &str, audience: &str) -> KeySet {
        let mut set = KeySet::empty(issuer, audience);
        for jwk in &jwks.keys {
            let ed25519 = matches!(
                &jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p)
                    if p.curve == jsonwebtoken::jwk::EllipticCurve::Ed25519
            );
            if let (true, Some(kid), Ok(key)) =
                (ed25519, &jwk.common.key_id, DecodingKey::from_jwk(jwk))
            {
                set.keys.insert(kid.clone(), key);
            }
        }
        set
    }

    /// Adds one key under `kid`.
    pub fn insert(&mut self, kid: String, key: DecodingKey) {
        self.keys.insert(kid, key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a token proves.
    pub fn check(&self, token: &str) -> Result<Caller, Refused> {
        use jsonwebtoken::errors::ErrorKind;
        // The header is read first only to pick the key and to tell "other key" from "bad
        // signature"; the signature check below is what decides.
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            // An algorithm the library does not know at all ("none") fails the header's
            // parse: tell the caller that rather than "malformed".
            if names_an_algorithm(token) {
                Refused::Algorithm
            } else {
                Refused::Malformed
            }
        })?;
        if header.alg != Algorithm::EdDSA {
            return Err(Refused::Algorithm);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(Refused::UnknownKey)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => Refused::Expired,
                    ErrorKind::InvalidSignature => Refused::Signature,
                    ErrorKind::InvalidAudience => Refused::Audience,
                    ErrorKind::InvalidIssuer => Refused::Issuer,
                    ErrorKind::InvalidAlgorithm => Refused::Algorithm,
                    _ => Refused::Malformed,
                }
            })?;
        Ok(Caller {
            subject: data.claims.sub,
            role: data.claims.role,
        })
    }
}

/// Does the token's header parse as JSON with an `alg`?
fn names_an_algorithm(token: &str) -> bool {
    use base64::Engine;
    token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|header| header.get("alg").is_some())
}

/// A plain HTTP/1.1 client for the token endpoint and the JWK set.
type HttpClient<B> =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>;

fn http_client<B>() -> HttpClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// Reading the gateway's keys or getting a service token failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: answered {status}: {body}")]
    Status {
        url: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("{url}: unreadable answer: {message}")]
    Body { url: String, message: String },
    #[error("CLIENT_SECRET_FILE {path}: {message}")]
    Secret { path: String, message: String },
}

/// Longest an answer of the token endpoint or the JWK set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from either.
const MAX_ANSWER: usize = 64 * 1024;

async fn fetch<B>(client: &HttpClient<B>, request: http::Request<B>) -> Result<Bytes, FetchError>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let url = request.uri().to_string();
    let http = |message: String| FetchError::Http {
        url: url.clone(),
        message,
    };
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
        .await
        .map_err(|_| http(format!("no answer within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| http(e.to_string()))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
    let bytes = tokio::time::timeout(FETCH_TIMEOUT, body.collect())
        .await
        .map_err(|_| http(format!("answer not read within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| FetchError::Body {
            url: url.clone(),
            message: e.to_string(),
        })?
        .to_bytes();
    if !status.is_success() {
        return Err(FetchError::Status {
            url,
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        });
    }
    Ok(bytes)
}

/// The gateway's published keys, as a backend checks tokens with them.
pub struct Verifier {
    jwks_url: http::Uri,
    issuer: String,
    audience: String,
    client: HttpClient<Empty<Bytes>>,
    /// The keys of the last good fetch (empty before the first).
    keys: RwLock<Arc<KeySet>>,
    /// When the keys were last fetched (or tried), to fetch at most once per
    /// [`Verifier::MIN_GAP`] however many tokens name an unknown key.
    fetched: RwLock<Option<Instant>>,
    /// One fetch at a time; callers that wait for it see its result.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh is under way: calls in the meantime start no other.
    refreshing: std::sync::atomic::AtomicBool,
}

impl Verifier {
    /// Keys older than this are fetched again in the background: a key removed from the
    /// set (retired after a rotation) stops being accepted within this time, as long as
    /// the set can be read (while it cannot, the last keys read stay in force).
    pub const MAX_AGE: Duration = Duration::from_secs(60);
    /// Least time between two fetches.
    pub const MIN_GAP: Duration = Duration::from_millis(500);

    pub fn new(args: &crate::config::AuthArgs) -> Result<Arc<Verifier>, String> {
        let jwks_url: http::Uri = args
            .jwks_url
            .parse()
            .map_err(|e| format!("JWKS_URL {:?}: {e}", args.jwks_url))?;
        if jwks_url.scheme_str() != Some("http") {
            return Err(format!(
                "JWKS_URL {:?}: an http:// URL (inside the mesh, Istio's mTLS protects it)",
                args.jwks_url
            ));
        }
        Ok(Arc::new(Verifier {
            jwks_url,
            issuer: args.token_issuer.clone(),
            audience: args.token_audience.clone(),
            client: http_client(),
            keys: RwLock::new(Arc::new(KeySet::empty(
                &args.token_issuer,
                &args.token_audience,
            ))),
            fetched: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            refreshing: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn fetched_within(&self, gap: Duration) -> bool {
        let fetched = *self
            .fetched
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        fetched.is_some_and(|at| at.elapsed() < gap)
    }

    /// Fetches the key set unless another caller did within [`Self::MIN_GAP`].
    async fn refresh(&self) -> Result<(), FetchError> {
        let _one = self.fetching.lock().await;
        if self.fetched_within(Self::MIN_GAP) {
            return Ok(());
        }
        *self
            .fetched
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        let request = http::Request::get(self.jwks_url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| FetchError::Http {
                url: self.jwks_url.to_string(),
                message: e.to_string(),
            })?;
        let body = fetch(&self.client, request).await?;
        let jwks: JwkSet = serde_json::from_slice(&body).map_err(|e| FetchError::Body {
            url: self.jwks_url.to_string(),
            message: e.to_string(),
        })?;
        let set = KeySet::from_jwks(&jwks, &self.issuer, &self.audience);
        tracing::info!(keys = set.len(), url = %self.jwks_url, "token keys fetched");
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// Fetches the keys in the background now, so the first call does not wait for them
    /// (the gateway may not be up yet: then the first call fetches them).
    pub fn prefetch(self: &Arc<Self>) {
        self.refresh_in_background();
    }

    /// Starts a fetch on its own task unless one is under way: stale keys stay in use
    /// meanwhile, and a busy server spawns one task a minute, not one per call.
    fn refresh_in_background(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.refresh().await {
                tracing::info!(%error, "token keys not fetched; the last ones stay");
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// The caller an `authorization` header proves, or why not: UNAUTHENTICATED for a
    /// bad or missing token, UNAVAILABLE when the keys cannot be read at all.
    pub async fn verify(
        self: &Arc<Self>,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Caller, Status> {
        let token = bearer(authorization)?;
        if !self.fetched_within(Self::MAX_AGE) {
            self.refresh_in_background();
        }
        match self.keys().check(token) {
            Err(Refused::UnknownKey) => {
                // A key published since the last fetch (a rotation), or a forged key id.
                if let Err(error) = self.refresh().await {
                    tracing::warn!(%error, "token keys not fetched");
                }
                let keys = self.keys();
                if keys.is_empty() {
                    // Not the caller's fault: no key has been read yet (gateway starting).
                    return Err(Status::unavailable(
                        "the token keys cannot be read yet; retry shortly",
                    ));
                }
                Ok(keys.check(token)?)
            }
            checked => Ok(checked?),
        }
    }
}

/// Refuses calls without a valid token and hands handlers the verified [`Caller`] (as a
/// request extension: [`Caller::of`]). Health checks and reflection pass untouched.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Verifier>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            verifier: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Paths anyone may call: the kubelet's probes carry no token, and reflection only
/// describes the public contract.
fn open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if open_path(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The clone waits for readiness; the ready one serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let verified = verifier
                .verify(request.headers().get(http::header::AUTHORIZATION))
                .await;
            match verified {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// A service's own token from the token endpoint (client_credentials), kept until shortly
/// before it expires.
pub struct ServiceCredentials {
    token_url: http::Uri,
    client_id: String,
    client_secret: String,
    client: HttpClient<Full<Bytes>>,
    /// The current `authorization` value and when to get the next one.
    current: tokio::sync::Mutex<Option<(http::HeaderValue, Instant)>>,
    /// When the last fetch failed, and why: calls within [`Self::RETRY_AFTER`] get that
    /// answer instead of sending the secret to the token endpoint again.
    failed: tokio::sync::Mutex<Option<(Instant, String)>>,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ServiceCredentials {
    /// Least time between two failed requests to the token endpoint.
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);

    /// From the settings; reads the secret file now, so a missing one stops the start.
    pub fn new(args: &crate::config::ClientArgs) -> Result<Arc<ServiceCredentials>, FetchError> {
        let secret_error = |message: String| FetchError::Secret {
            path: args.client_secret_file.display().to_string(),
            message,
        };
        let client_secret = std::fs::read_to_string(&args.client_secret_file)
            .map_err(|e| secret_error(e.to_string()))?
            .trim()
            .to_owned();
        if client_secret.is_empty() {
            return Err(secret_error("empty".into()));
        }
        let token_url = args.token_url.parse().map_err(|e| FetchError::Http {
            url: args.token_url.clone(),
            message: format!("not a URL: {e}"),
        })?;
        Ok(Arc::new(ServiceCredentials {
            token_url,
            client_id: args.client_id.clone(),
            client_secret,
            client: http_client(),
            current: tokio::sync::Mutex::new(None),
            failed: tokio::sync::Mutex::new(None),
        }))
    }

    /// The `authorization` value to send: the kept token, or a new one when the kept one
    /// has lived half its life (so a slow token endpoint never lets it run out).
    pub async fn authorization(&self) -> Result<http::HeaderValue, FetchError> {
        let mut current = self.current.lock().await;
        if let Some((value, renew_at)) = current.as_ref() {
            if Instant::now() < *renew_at {
                return Ok(value.clone());
            }
        }
        let mut failed = self.failed.lock().await;
        if let Some((at, why)) = failed.as_ref() {
            if at.elapsed() < Self::RETRY_AFTER {
                return Err(FetchError::Http {
                    url: self.token_url.to_string(),
                    message: format!("{why} (not asked again for {:?})", Self::RETRY_AFTER),
                });
            }
        }
        match self.fetch().await {
            Ok(fresh) => {
                let value = fresh.0.clone();
                *current = Some(fresh);
                *failed = None;
                Ok(value)
            }
            Err(error) => {
                *failed = Some((Instant::now(), error.to_string()));
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<(http::HeaderValue, Instant), FetchError> {
        let url = self.token_url.to_string();
        let form = serde_urlencoded::to_string([
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
        ])
        .map_err(|e| FetchError::Http {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let request = http::Request::post(self.token_url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| FetchError::Http {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let started = Instant::now();
        let body = fetch(&self.client, request).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| FetchError::Body {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let value = http::HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|e| FetchError::Body {
                url,
                message: e.to_string(),
            })?;
        tracing::info!(client = %self.client_id, expires_in = answer.expires_in, "service token obtained");
        Ok((value, started + Duration::from_secs(answer.expires_in / 2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert_eq!(bearer(Some(&v("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer(Some(&v("BEARER abc"))), Ok("abc"));
        assert_eq!(bearer(Some(&v("Basic abc"))), Err(Refused::NotBearer));
        assert_eq!(bearer(Some(&v("abc"))), Err(Refused::NotBearer));
        assert_eq!(bearer(None), Err(Refused::Missing));
    }

    #[test]
    fn open_paths_are_probes_and_reflection_only() {
        assert!(open_path("/grpc.health.v1.Health/Check"));
        assert!(open_path(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!open_path("/parking.v1.ParkingLotService/SetDailyCapacity"));
        assert!(!open_path("/grpc.health.v1.HealthX/Check"));
    }

    #[test]
    fn an_empty_key_set_knows_no_key() {
        let set = KeySet::empty("i", "a");
        assert!(set.is_empty());
        assert_eq!(set.check("not-a-jwt"), Err(Refused::Malformed));
    }

    #[tokio::test]
    async fn unreadable_keys_are_unavailable_not_a_bad_token() {
        let verifier = Verifier::new(&crate::config::AuthArgs {
            // Nothing listens on port 1.
            jwks_url: "http://127.0.0.1:1/.well-known/jwks.json".into(),
            token_issuer: "i".into(),
            token_audience: "a".into(),
        })
        .expect("a URL");
        // A syntactically fine EdDSA token with a key id nobody published.
        let token = "eyJhbGciOiJFZERTQSIsImtpZCI6IngifQ.e30.c2ln";
        let header = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii");
        let status = verifier.verify(Some(&header)).await.expect_err("no keys");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let status = verifier.verify(None).await.expect_err("no token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(Verifier::new(&crate::config::AuthArgs {
            jwks_url: "https://elsewhere/jwks".into(),
            token_issuer: "i".into(),
            token_audience: "a".into(),
        })
        .is_err());
    }
}
