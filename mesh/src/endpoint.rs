//! One endpoint of a host: one HTTP/2 connection (hyper's, over TCP or rustls), opened
//! lazily, whose unary responses are buffered and classified (see [`crate::classify`]).
//! Injected faults ([`crate::fault`]) are applied here, inside the try.

use crate::classify::{self, Judged};
use crate::error::BoxError;
use crate::{Call, Hop, Request, Response};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where an endpoint is and the labels subsets select it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAddr {
    /// e.g. `http://10.0.0.7:50053`
    pub uri: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl EndpointAddr {
    /// Parses `uri` or `key=value,key=value@uri`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (labels, uri) = match text.rsplit_once('@') {
            Some((labels, uri)) if !labels.contains("://") => (labels, uri),
            _ => ("", text),
        };
        let mut map = std::collections::BTreeMap::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("endpoint label {pair:?} is not key=value"))?;
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(Self {
            uri: uri.trim().to_owned(),
            labels: map,
        })
    }

    /// Parses a comma-separated list of endpoints. Labels are comma-separated too, so a
    /// piece belongs to the next endpoint until that one's `://` shows up:
    /// `version=v2,zone=a@http://a:1,http://b:1` is two endpoints.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let mut endpoints = Vec::new();
        let mut pending = String::new();
        for piece in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !pending.is_empty() {
                pending.push(',');
            }
            pending.push_str(piece);
            if piece.contains("://") {
                endpoints.push(Self::parse(&pending)?);
                pending.clear();
            }
        }
        if !pending.is_empty() {
            return Err(format!("{pending:?} names no endpoint (http://host:port)"));
        }
        Ok(endpoints)
    }
}

/// TLS for `https://` endpoints: the caller's certificate and the CA it trusts for its
/// peers (mutual TLS), spoken by the endpoint itself over rustls.
#[derive(Clone)]
pub struct ClientTls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// From PEM: the caller's certificate chain, its private key, the CA's certificate(s).
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        if chain.is_empty() {
            return Err("certificate: none found".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
        let cas = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("CA certificate: {e}"))?;
        // As tonic: a bundle's certificates that cannot be parsed are skipped.
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(cas);
        if roots.is_empty() {
            return Err("CA certificate: none found".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("certificate and key: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self(Arc::new(config)))
    }
}

/// One endpoint of a host: one HTTP/2 connection, opened by the first call and again by
/// the first call after it closed, whose unary answers are buffered and judged as Envoy
/// does. A try is handed to hyper's connection handle at once, without the task hop of a
/// tonic channel (whose buffer passes every call to a worker task of its own): the
/// layers bench reads an endpoint alone 0.82-0.86x a tonic channel's latency at one call
/// in flight, and 3-6 % more calls at 16 in flight.
#[derive(Debug)]
pub struct Endpoint {
    /// Scheme and authority of every request's URI (tonic's client sends the path only).
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// For `https://`.
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    /// The open connection's handle; `None` before the first call.
    sender: Mutex<Option<Sender>>,
    /// Held while opening, so calls that find the connection closed open it once.
    opening: tokio::sync::Mutex<()>,
    /// The host (or host/subset) it serves, named when a try gets no answer.
    host: Arc<str>,
}

type Sender = hyper::client::conn::http2::SendRequest<tonic::body::Body>;
type Answer = hyper::Result<http::Response<hyper::body::Incoming>>;

/// How long opening a connection may take when the DestinationRule sets no
/// `connectTimeout` (Envoy's default, as Istio leaves it: 10 s).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Endpoint {
    /// Connects lazily: the caller starts while the host is down. An `https://` endpoint
    /// needs `tls`, and `tls` needs `https://` (no silent downgrade to plain text).
    pub fn new(
        host: &str,
        addr: &EndpointAddr,
        connect_timeout: Option<Duration>,
        tls: Option<&ClientTls>,
    ) -> Result<Self, String> {
        let bad = |e: &dyn std::fmt::Display| format!("endpoint {}: {e}", addr.uri);
        let uri: http::Uri = addr.uri.parse().map_err(|e| bad(&e))?;
        let authority = uri
            .authority()
            .filter(|a| a.port_u16().is_some())
            .cloned()
            .ok_or_else(|| bad(&"an endpoint is http://host:port or https://host:port"))?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(bad(&"an endpoint is http://host:port or https://host:port"));
        }
        let https = scheme == http::uri::Scheme::HTTPS;
        match (tls, https) {
            (Some(_), true) | (None, false) => {}
            (Some(_), false) => return Err(bad(&"TLS is configured, so use https://")),
            (None, true) => {
                return Err(bad(
                    &"https:// needs TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE",
                ))
            }
        }
        Ok(Self {
            scheme,
            authority,
            tls: tls.cloned(),
            connect_timeout: connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            sender: Mutex::default(),
            opening: tokio::sync::Mutex::const_new(()),
            host: host.into(),
        })
    }

    /// Hands `request` to the open connection, or gives it back when there is none.
    #[allow(clippy::result_large_err)] // the request itself, handed back
    fn send(&self, mut request: Request) -> Result<impl Future<Output = Answer>, Request> {
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_mut().filter(|s| !s.is_closed()) {
            Some(sender) => {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(self.scheme.clone());
                uri.authority = Some(self.authority.clone());
                uri.path_and_query = request.uri().path_and_query().cloned();
                if let Ok(uri) = http::Uri::from_parts(uri) {
                    *request.uri_mut() = uri;
                }
                Ok(sender.send_request(request))
            }
            None => Err(request),
        }
    }

    /// Opens the connection, unless another call just did.
    async fn open(&self) -> Result<(), BoxError> {
        let _turn = self.opening.lock().await;
        if self.is_open() {
            return Ok(());
        }
        let sender = tokio::time::timeout(self.connect_timeout, self.handshake())
            .await
            .map_err(|_| format!("no connection within {:?}", self.connect_timeout))??;
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        Ok(())
    }

    fn is_open(&self) -> bool {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    async fn handshake(&self) -> Result<Sender, BoxError> {
        let port = self.authority.port_u16().unwrap_or(80);
        // An IPv6 address comes bracketed in a URI, not in a socket address.
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        // As tonic: without it a call waits out the peer's delayed ACK.
        stream.set_nodelay(true)?;
        match &self.tls {
            None => self.http2(stream).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
                let stream = tokio_rustls::TlsConnector::from(tls.0.clone())
                    .connect(name, stream)
                    .await?;
                // As tonic: a peer that does not agree to HTTP/2 is not spoken to.
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the peer did not agree to HTTP/2 (ALPN h2)".into());
                }
                self.http2(stream).await
            }
        }
    }

    /// HTTP/2 over `io`, its connection driven by a task of its own.
    async fn http2<T>(&self, io: T) -> Result<Sender, BoxError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(BoxingExecutor)
            // None of hyper's timers is set; given, one set later cannot panic for want of it.
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await?;
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%authority, %error, "connection to an endpoint closed");
            }
        });
        Ok(sender)
    }
}

impl Hop for Endpoint {
    async fn call(&self, request: Request, call: &mut Call) -> Result<Response, BoxError> {
        if let Some(fault) = crate::fault::apply(call.faults).await {
            call.judged = Some(classify::head(&fault));
            return Ok(fault);
        }
        let failed = |e| crate::error::upstream_failure(&self.host, e);
        let answer = match self.send(request) {
            Ok(answer) => answer,
            Err(request) => {
                // Opening is rare and kept out of the call's future (see Hop).
                Box::pin(self.open()).await.map_err(failed)?;
                self.send(request)
                    .map_err(|_| failed("the connection closed as it opened".into()))?
            }
        };
        let response = answer
            .await
            .map_err(|e| failed(Box::new(e)))?
            .map(tonic::body::Body::new);
        let (response, judged) = judge(response, call.streaming).await?;
        call.judged = Some(judged);
        Ok(response)
    }
}

/// Spawns hyper's tasks boxed. hyper spawns one per request to send its body, of a type
/// that holds the connection's whole state in another variant (about 1.5 KB): spawned
/// unboxed, tokio copies that size three times per call (callgrind: +3.4 k instructions
/// per call against tonic's channel, which boxes the same way).
#[derive(Clone, Copy, Debug)]
struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(Box::pin(task) as crate::BoxFuture<F::Output>);
    }
}

/// Judges an upstream's answer: a unary one buffered whole (its status may be in the
/// trailers), a stream by its headers, passing its body through as it comes.
pub async fn judge(response: Response, streaming: bool) -> Result<(Response, Judged), BoxError> {
    if streaming {
        let judged = classify::head(&response);
        Ok((response, judged))
    } else {
        classify::buffer(response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_that_cannot_work_are_named() {
        let pem = |label: &str| {
            format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n").into_bytes()
        };
        let (cert, key) = (pem("CERTIFICATE"), pem("PRIVATE KEY"));
        for (cert, key, ca, names) in [
            (
                &b"nonsense"[..],
                &key[..],
                &cert[..],
                "certificate: none found",
            ),
            (&cert[..], &b"nonsense"[..], &cert[..], "private key"),
            (&cert[..], &key[..], &b""[..], "CA certificate"),
        ] {
            let refused = ClientTls::from_pem(cert, key, ca).expect_err("refused");
            assert!(refused.contains(names), "{refused}");
        }
        // An https:// endpoint needs TLS, and TLS needs https://.
        let addr = EndpointAddr::parse("https://127.0.0.1:1").expect("valid");
        let refused = Endpoint::new("h", &addr, None, None).expect_err("refused");
        assert!(refused.contains("TLS_CERT_FILE"), "{refused}");
    }

    #[test]
    fn lists_keep_labels_with_their_endpoint() {
        let list =
            EndpointAddr::parse_list("version=v2,zone=a@http://a:1, http://b:2").expect("valid");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].uri, "http://a:1");
        assert_eq!(list[0].labels.len(), 2);
        assert_eq!(list[1].uri, "http://b:2");
        assert!(EndpointAddr::parse_list("http://a:1,version=v2").is_err());
    }

    #[test]
    fn parses_addresses_with_labels() {
        let plain = EndpointAddr::parse("http://127.0.0.1:50053").expect("valid");
        assert!(plain.labels.is_empty());
        let labelled =
            EndpointAddr::parse("version=v2,zone=a@http://10.0.0.7:50053").expect("valid");
        assert_eq!(labelled.uri, "http://10.0.0.7:50053");
        assert_eq!(
            labelled.labels.get("version").map(String::as_str),
            Some("v2")
        );
        assert!(EndpointAddr::parse("oops@http://x").is_err());
    }
}
