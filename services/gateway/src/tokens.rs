//! Access tokens: EdDSA (Ed25519) JWTs the gateway signs at `/oauth2/token` and checks on
//! every call, and the public keys as a JWK set at `/.well-known/jwks.json`, where the
//! backends read them to check the same tokens again (`parking_common::auth`).
//!
//! A token is accepted only when all of these hold: algorithm EdDSA (so `alg: none` and
//! HMAC-with-the-public-key tricks fail), a published key id, a valid signature, not
//! expired (a few seconds of leeway for clock skew), our issuer and audience, and a known
//! role.
//!
//! Key rotation with no downtime: TOKEN_KEY_FILE may hold several keys. The first signs;
//! all are published and accepted. The file is read again when it changes, so a rotation
//! is three edits with no restart: add the new key second (published: every backend
//! fetches it as soon as a token names it), move it first (it signs), and once the
//! longest-lived token of the old key has expired, remove the old key.

use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use parking_common::auth::KeySet;
pub use parking_common::auth::{Claims, Refused};
use parking_common::identity::{Caller, Role};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("token key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("signing a token failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("no randomness for a key: {0}")]
    Random(getrandom::Error),
}

/// The keys of one reading of the key file.
struct Keys {
    /// The key that signs, and its id.
    signing: (String, EncodingKey),
    /// Every key's public half, for checking.
    checking: KeySet,
    /// The same public halves as served at `/.well-known/jwks.json`.
    jwks: JwkSet,
}

impl Keys {
    fn new(
        keys: &[ed25519_dalek::SigningKey],
        issuer: &str,
        audience: &str,
    ) -> Result<Keys, Error> {
        use base64::Engine;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut checking = KeySet::empty(issuer, audience);
        let mut jwks = JwkSet { keys: Vec::new() };
        let mut signing = None;
        for key in keys {
            let public = key.verifying_key().to_bytes();
            // The key id is the public key's first 12 bytes: stable for a key, new for a new one.
            let kid = b64.encode(&public[..12]);
            checking.insert(kid.clone(), DecodingKey::from_ed_der(&public));
            jwks.keys.push(Jwk {
                common: CommonParameters {
                    public_key_use: Some(PublicKeyUse::Signature),
                    key_algorithm: Some(KeyAlgorithm::EdDSA),
                    key_id: Some(kid.clone()),
                    ..Default::default()
                },
                algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x: b64.encode(public),
                }),
            });
            if signing.is_none() {
                let der = key.to_pkcs8_der().map_err(|e| Error::Key {
                    path: "(in memory)".into(),
                    message: e.to_string(),
                })?;
                signing = Some((kid, EncodingKey::from_ed_der(der.as_bytes())));
            }
        }
        let signing = signing.ok_or_else(|| Error::Key {
            path: "(in memory)".into(),
            message: "no key".into(),
        })?;
        Ok(Keys {
            signing,
            checking,
            jwks,
        })
    }
}

/// Every PKCS#8 PEM Ed25519 private key in a file, in order.
fn read_keys(path: &Path) -> Result<Vec<ed25519_dalek::SigningKey>, Error> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key_error = |message: String| Error::Key {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
    const END: &str = "-----END PRIVATE KEY-----";
    let mut keys = Vec::new();
    for block in text.split_inclusive(END).filter(|b| b.contains(END)) {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(block.trim()).map_err(|e| {
            key_error(format!(
                "key {}: not a PKCS#8 Ed25519 private key: {e}",
                keys.len() + 1
            ))
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(key_error(
            "no PKCS#8 private key (make one with `openssl genpkey -algorithm ed25519`)".into(),
        ));
    }
    // A key begun but not ended: the file is being written; read it when it is whole,
    // rather than drop a key still in use.
    let tail = text.rsplit(END).next().unwrap_or_default();
    if tail.contains("-----BEGIN") {
        return Err(key_error("the last key is incomplete".into()));
    }
    Ok(keys)
}

/// Signing and checking with the gateway's keys.
pub struct Tokens {
    keys: RwLock<Arc<Keys>>,
    /// The key file, read again when it changes (None: a key made at start), and its
    /// stamp before the keys in use were read (a change since is never missed).
    path: Option<(PathBuf, crate::watch::Stamp)>,
    /// Expected `iss`; also what we put there.
    pub issuer: String,
    /// Expected `aud`; also what we put there.
    pub audience: String,
    /// How long a token lives.
    pub lifetime: Duration,
}

impl Tokens {
    /// From a file of PKCS#8 PEM Ed25519 private keys (`openssl genpkey -algorithm
    /// ed25519`); the first signs.
    pub fn from_pem_file(
        path: &Path,
        issuer: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<Tokens, Error> {
        let before = crate::watch::stamp(path);
        let keys = Keys::new(&read_keys(path)?, issuer, audience)?;
        Ok(Self::new(
            keys,
            Some((path.to_owned(), before)),
            issuer,
            audience,
            lifetime,
        ))
    }

    /// A fresh key that lives as long as this process: tokens die with a restart, and
    /// replicas do not accept each other's. For one machine (`make run`) and tests.
    pub fn ephemeral(issuer: &str, audience: &str, lifetime: Duration) -> Result<Tokens, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(Error::Random)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let keys = Keys::new(&[key], issuer, audience)?;
        Ok(Self::new(keys, None, issuer, audience, lifetime))
    }

    fn new(
        keys: Keys,
        path: Option<(PathBuf, crate::watch::Stamp)>,
        issuer: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Tokens {
        Tokens {
            keys: RwLock::new(Arc::new(keys)),
            path,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            lifetime,
        }
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The public key set served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        self.keys().jwks.clone()
    }

    /// The id of the key that signs now.
    pub fn signing_kid(&self) -> String {
        self.keys().signing.0.clone()
    }

    /// A signed token for `subject` with `role`.
    pub fn issue(&self, subject: &str, role: Role) -> Result<String, Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            role,
            iat: now,
            exp: now + self.lifetime.as_secs(),
        };
        self.sign(&claims)
    }

    /// Signs any claims with the signing key (tests use it to make expired or
    /// misaddressed tokens that are otherwise genuine).
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let keys = self.keys();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.signing.0.clone());
        jsonwebtoken::encode(&header, claims, &keys.signing.1).map_err(Error::Sign)
    }

    /// The caller an `authorization` header value proves.
    pub fn check_header(
        &self,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Caller, Refused> {
        self.check(parking_common::auth::bearer(authorization)?)
    }

    /// The caller a token proves.
    pub fn check(&self, token: &str) -> Result<Caller, Refused> {
        self.keys().checking.check(token)
    }

    /// Reads the key file again whenever it changes; a file that cannot be read leaves
    /// the last good keys in place.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let Some((path, seen)) = self.path.clone() else {
            return;
        };
        crate::watch::on_change(path, seen, every, shutdown, move |path| {
            match read_keys(path).and_then(|k| Keys::new(&k, &self.issuer, &self.audience)) {
                Ok(keys) => {
                    tracing::info!(
                        keys = keys.jwks.keys.len(),
                        signing = %keys.signing.0,
                        "token keys reloaded"
                    );
                    *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                }
                Err(error) => {
                    tracing::error!(%error, "token key file change refused; keeping the last good keys")
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn tokens() -> Tokens {
        Tokens::ephemeral("https://gw", "parking-mesh", Duration::from_secs(60)).expect("key")
    }

    #[test]
    fn a_token_proves_its_subject_and_role() {
        let t = tokens();
        let jwt = t.issue("3117", Role::Employee).expect("sign");
        assert_eq!(
            t.check(&jwt),
            Ok(Caller {
                subject: "3117".into(),
                role: Role::Employee
            })
        );
        let header = http::HeaderValue::from_str(&format!("Bearer {jwt}")).expect("ascii");
        assert!(t.check_header(Some(&header)).is_ok());
        assert_eq!(t.check_header(None), Err(Refused::Missing));
        let basic = http::HeaderValue::from_static("Basic Zm9vOmJhcg==");
        assert_eq!(t.check_header(Some(&basic)), Err(Refused::NotBearer));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let t = tokens();
        let jwt = t.issue("3117", Role::Employee).expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        // Tampered payload: same signature, role raised to admin.
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).expect("b64")).expect("json");
        claims["role"] = "admin".into();
        let payload = B64.encode(serde_json::to_vec(&claims).expect("json"));
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_eq!(t.check(&tampered), Err(Refused::Signature));
        // alg: none with no signature.
        let none = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            t.check(&format!("{none}.{payload}.")),
            Err(Refused::Algorithm)
        );
        // Another key with our key id.
        let other = tokens();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(t.signing_kid());
        let forged = jsonwebtoken::encode(&header, &claims, &other.keys().signing.1).expect("sign");
        assert_eq!(t.check(&forged), Err(Refused::Signature));
        // Another key under its own id.
        let theirs = other.issue("3117", Role::Admin).expect("sign");
        assert_eq!(t.check(&theirs), Err(Refused::UnknownKey));
        assert_eq!(t.check("not-a-jwt"), Err(Refused::Malformed));
    }

    #[test]
    fn expiry_audience_and_issuer_are_checked() {
        let t = tokens();
        let sign = |edit: &dyn Fn(&mut Claims)| {
            let now = jsonwebtoken::get_current_timestamp();
            let mut claims = Claims {
                iss: t.issuer.clone(),
                aud: t.audience.clone(),
                sub: "3117".into(),
                role: Role::Employee,
                iat: now,
                exp: now + 60,
            };
            edit(&mut claims);
            t.sign(&claims).expect("sign")
        };
        assert!(t.check(&sign(&|_| {})).is_ok());
        assert_eq!(
            t.check(&sign(&|c| c.exp = c.iat - 60)),
            Err(Refused::Expired)
        );
        assert_eq!(
            t.check(&sign(&|c| c.aud = "someone-else".into())),
            Err(Refused::Audience)
        );
        assert_eq!(
            t.check(&sign(&|c| c.iss = "https://evil".into())),
            Err(Refused::Issuer)
        );
        let jwks = serde_json::to_value(t.jwks()).expect("json");
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        assert!(
            jwks["keys"][0].get("d").is_none(),
            "no private part in the JWKS"
        );
    }

    #[tokio::test]
    async fn a_key_file_rotates_without_a_restart() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let folder = std::env::temp_dir().join(format!("tokens-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("dir");
        let path = folder.join("keys.pem");
        let pem = |seed: u8| {
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .to_pkcs8_pem(Default::default())
                .expect("pem")
                .to_string()
        };
        std::fs::write(&path, pem(1)).expect("write");
        let t = Arc::new(
            Tokens::from_pem_file(&path, "i", "a", Duration::from_secs(60)).expect("keys"),
        );
        let old = t.issue("6", Role::Employee).expect("sign");
        let old_kid = t.signing_kid();
        let shutdown = CancellationToken::new();
        tokio::spawn(t.clone().watch(Duration::from_millis(20), shutdown.clone()));
        let reloaded = |keys: usize| {
            let t = t.clone();
            async move {
                for _ in 0..200 {
                    if t.jwks().keys.len() == keys {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("not reloaded");
            }
        };
        // The new key first: it signs; the old one stays published and accepted.
        std::fs::write(&path, pem(2) + &pem(1)).expect("write");
        reloaded(2).await;
        assert_ne!(t.signing_kid(), old_kid);
        let new = t.issue("6", Role::Employee).expect("sign");
        assert!(t.check(&old).is_ok() && t.check(&new).is_ok());
        // A broken file changes nothing, nor does one caught half-written.
        std::fs::write(&path, pem(2) + "-----BEGIN PRIVATE KEY-----\nMC4CAQAw").expect("write");
        assert!(read_keys(&path).is_err(), "an unfinished key is no key set");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(t.jwks().keys.len(), 2, "both keys still published");
        std::fs::write(&path, "not a key").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(t.check(&old).is_ok());
        // The old key retired: its tokens are refused, the new one's accepted.
        std::fs::write(&path, pem(2)).expect("write");
        reloaded(1).await;
        assert_eq!(t.check(&old), Err(Refused::UnknownKey));
        assert!(t.check(&new).is_ok());
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(&folder);
    }
}
