//! Access tokens: EdDSA (Ed25519) JWTs the gateway signs at `/oauth2/token` and checks on
//! every call, and the public key as a JWK set at `/.well-known/jwks.json` so others can
//! check them too.
//!
//! A token is accepted only when all of these hold: algorithm EdDSA (so `alg: none` and
//! HMAC-with-the-public-key tricks fail), our key id, a valid signature, not expired
//! (a few seconds of leeway for clock skew), our issuer and audience, and a known role.

use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_common::identity::{Caller, Role};
use std::path::Path;
use std::time::Duration;

/// What a token says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// A user's login (an employee's member id) or a client's id.
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("token key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("signing a token failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("no randomness for a key: {0}")]
    Random(getrandom::Error),
}

/// Why a token was refused; the message goes back to the caller as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("missing access token: send `authorization: Bearer <token>` (get one at POST /oauth2/token)")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("access token expired; log in again")]
    Expired,
    #[error("access token not signed by this gateway's key")]
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

/// Signing and checking with one Ed25519 key.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    kid: String,
    jwks: JwkSet,
    /// Expected `iss`; also what we put there.
    pub issuer: String,
    /// Expected `aud`; also what we put there.
    pub audience: String,
    /// How long a token lives.
    pub lifetime: Duration,
}

impl Tokens {
    /// From a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem_file(
        path: &Path,
        issuer: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<Tokens, Error> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key_error = |message: String| Error::Key {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| key_error(format!("not a PKCS#8 Ed25519 private key: {e}")))?;
        Self::new(key, issuer, audience, lifetime)
    }

    /// A fresh key that lives as long as this process: tokens die with a restart, and
    /// replicas do not accept each other's. For one machine (`make run`) and tests.
    pub fn ephemeral(issuer: &str, audience: &str, lifetime: Duration) -> Result<Tokens, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(Error::Random)?;
        Self::new(
            ed25519_dalek::SigningKey::from_bytes(&seed),
            issuer,
            audience,
            lifetime,
        )
    }

    fn new(
        key: ed25519_dalek::SigningKey,
        issuer: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<Tokens, Error> {
        use base64::Engine;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let der = key.to_pkcs8_der().map_err(|e| Error::Key {
            path: "(in memory)".into(),
            message: e.to_string(),
        })?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let public = key.verifying_key().to_bytes();
        let decoding = DecodingKey::from_ed_der(&public);
        // The key id is the public key's first 12 bytes: stable for a key, new for a new one.
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&public[..12]);
        let jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(kid.clone()),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public),
            }),
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(Tokens {
            encoding,
            decoding,
            validation,
            kid,
            jwks: JwkSet { keys: vec![jwk] },
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            lifetime,
        })
    }

    /// The public key set served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
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

    /// Signs any claims with this key (tests use it to make expired or misaddressed
    /// tokens that are otherwise genuine).
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(Error::Sign)
    }

    /// The caller an `authorization` header value proves.
    pub fn check_header(
        &self,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Caller, Refused> {
        let value = authorization.ok_or(Refused::Missing)?;
        let value = value.to_str().map_err(|_| Refused::NotBearer)?;
        // The scheme is case-insensitive (RFC 9110 11.1).
        let (scheme, token) = value.split_once(' ').ok_or(Refused::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Refused::NotBearer);
        }
        let token = token.trim();
        self.check(token)
    }

    /// The caller a token proves.
    pub fn check(&self, token: &str) -> Result<Caller, Refused> {
        use jsonwebtoken::errors::ErrorKind;
        // The header is read first only to tell "other key" from "bad signature";
        // the signature check below is what decides.
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
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(Refused::UnknownKey);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refused::Expired,
                ErrorKind::InvalidSignature => Refused::Signature,
                ErrorKind::InvalidAudience => Refused::Audience,
                ErrorKind::InvalidIssuer => Refused::Issuer,
                ErrorKind::InvalidAlgorithm => Refused::Algorithm,
                _ => Refused::Malformed,
            })?;
        Ok(Caller::User {
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
            Ok(Caller::User {
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
        header.kid = Some(t.kid.clone());
        let forged = jsonwebtoken::encode(&header, &claims, &other.encoding).expect("sign");
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
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(t.kid.clone());
            jsonwebtoken::encode(&header, &claims, &t.encoding).expect("sign")
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
}
