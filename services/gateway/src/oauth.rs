//! The OAuth2 token endpoint (RFC 6749): `POST /oauth2/token` with the password grant
//! (people: section 4.3) or the client_credentials grant (programs: section 4.4), form
//! encoded, client secrets in HTTP Basic or in the form; and the public keys at
//! `GET /.well-known/jwks.json`.

use crate::guard::Guard;
use crate::tokens::Tokens;
use crate::users::{Accounts, AccountsFile};
use axum::body::Body as AxumBody;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;

/// Largest token request read; a form with a name and a password is far smaller.
const MAX_FORM: usize = 8 * 1024;

/// What the token endpoint needs.
pub struct TokenEndpoint {
    tokens: Arc<Tokens>,
    accounts: AccountsFile,
    /// For the client address's rate limit: password guessing costs calls too.
    guard: Arc<Guard>,
    /// argon2 checks at once (each takes ~19 MiB and tens of ms of CPU): beyond the
    /// cores they only queue memory, so extra attempts get 503 at once.
    checks: Arc<tokio::sync::Semaphore>,
    /// Attempts per login name, whatever address they come from: guessing one user's
    /// password is slow even from many addresses.
    per_name: crate::limit::Limiter<String>,
}

#[derive(serde::Deserialize, Default)]
struct Form {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn json(status: StatusCode, body: serde_json::Value) -> http::Response<AxumBody> {
    let mut response = crate::rest::json_body(status, body.to_string());
    let headers = response.headers_mut();
    // RFC 6749 5.1: token answers are never cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> http::Response<AxumBody> {
    let mut response = json(
        status,
        serde_json::json!({ "error": error, "error_description": description }),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"parking-mesh\""),
        );
    }
    response
}

/// `client_id:client_secret` from an HTTP Basic header (each part form-url-encoded,
/// RFC 6749 2.3.1).
fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
            .ok()
            .and_then(|mut v| v.pop())
            .map(|(_, v)| v)
    };
    Some((unescape(id)?, unescape(secret)?))
}

impl TokenEndpoint {
    pub fn new(tokens: Arc<Tokens>, accounts: AccountsFile, guard: Arc<Guard>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            tokens,
            accounts,
            guard,
            checks: Arc::new(tokio::sync::Semaphore::new(cores)),
            // 1 a second, 10 at once: a person mistyping is never slowed down.
            per_name: crate::limit::Limiter::new(crate::limit::Config {
                per_second: std::num::NonZeroU32::MIN,
                burst: std::num::NonZeroU32::new(10).unwrap_or(std::num::NonZeroU32::MIN),
            }),
        }
    }

    /// Runs one argon2 check off the async workers, within the limits above.
    async fn check<T: Send + 'static>(
        &self,
        name: &str,
        check: impl FnOnce(&Accounts) -> Option<T> + Send + 'static,
    ) -> Result<Option<T>, http::Response<AxumBody>> {
        if let Err(over) = self.per_name.check(&name.to_owned()) {
            let mut response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "too many attempts for this name; wait a moment",
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(over.retry_after_secs),
            );
            return Err(response);
        }
        let Ok(permit) = self.checks.clone().try_acquire_owned() else {
            let mut response = oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many logins at once; retry in a second",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            return Err(response);
        };
        let accounts = self.accounts.current();
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            check(&accounts)
        })
        .await;
        checked.map_err(|_| {
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "checking the password failed",
            )
        })
    }

    /// `POST /oauth2/token`.
    pub async fn token(
        self: Arc<Self>,
        request: axum::extract::Request,
    ) -> http::Response<AxumBody> {
        let (parts, body) = request.into_parts();
        if let Err(rejection) = self.guard.limit_addr(&parts.headers, &parts.extensions) {
            return rejection.json();
        }
        if parts.method != http::Method::POST {
            return oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use POST",
            );
        }
        let form_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send the parameters as application/x-www-form-urlencoded",
            );
        }
        let bytes = match http_body_util::Limited::new(body, MAX_FORM).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return oauth_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    "token request too large",
                )
            }
        };
        let form: Form = match serde_urlencoded::from_bytes(&bytes) {
            Ok(form) => form,
            Err(e) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("unreadable form: {e}"),
                )
            }
        };
        let grant = form.grant_type.clone().unwrap_or_default();
        let checked = match grant.as_str() {
            "password" => {
                let (Some(user), Some(password)) = (form.username, form.password) else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the password grant needs username and password",
                    );
                };
                let name = user.clone();
                let role = self
                    .check(&name, move |accounts| {
                        accounts
                            .check_user(&user, &password)
                            .map(|role| (user, role))
                    })
                    .await;
                match role {
                    Ok(Some(found)) => found,
                    Ok(None) => {
                        tracing::info!("password grant refused");
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "wrong user name or password",
                        );
                    }
                    Err(response) => return response,
                }
            }
            "client_credentials" => {
                let credentials = basic_credentials(&parts.headers)
                    .or_else(|| form.client_id.zip(form.client_secret));
                let Some((id, secret)) = credentials else {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "client_credentials needs the client id and secret (HTTP Basic or form)",
                    );
                };
                let name = id.clone();
                let role = self
                    .check(&name, move |accounts| {
                        // A client's subject is marked as one, so a client id can never
                        // pass for a member id.
                        accounts
                            .check_client(&id, &secret)
                            .map(|role| (format!("client:{id}"), role))
                    })
                    .await;
                match role {
                    Ok(Some(found)) => found,
                    Err(response) => return response,
                    Ok(None) => {
                        tracing::info!("client_credentials grant refused");
                        return oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_client",
                            "unknown client or wrong secret",
                        );
                    }
                }
            }
            "" => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type is missing",
                )
            }
            other => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("grant_type {other:?}: password or client_credentials"),
                )
            }
        };
        let (subject, role) = checked;
        match self.tokens.issue(&subject, role) {
            Ok(token) => {
                tracing::info!(subject = %subject, %role, grant = %grant, "token issued");
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": self.tokens.lifetime.as_secs(),
                    }),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "signing a token failed");
                oauth_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "could not sign a token",
                )
            }
        }
    }
}

/// `GET /.well-known/jwks.json`.
pub fn jwks(tokens: &Tokens) -> http::Response<AxumBody> {
    let mut response = crate::rest::json_body(
        StatusCode::OK,
        serde_json::to_string(&tokens.jwks()).unwrap_or_else(|_| "{\"keys\":[]}".into()),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_url_decoded() {
        let mut headers = http::HeaderMap::new();
        // "ops%3Abot:s%20cret" -> ("ops:bot", "s cret")
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic b3BzJTNBYm90OnMlMjBjcmV0"),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("ops:bot".into(), "s cret".into()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&headers), None);
    }
}
