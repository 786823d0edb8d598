//! One endpoint of a host: a tonic `Channel` (one HTTP/2 connection, connected lazily)
//! whose unary responses are buffered and classified (see [`crate::classify`]). Injected
//! faults ([`crate::fault`]) are applied here, inside the try.

use crate::classify::{self, Judged};
use crate::error::BoxError;
use crate::{Call, Hop, Request, Response};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use tower::{Service, ServiceExt};

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

/// One endpoint of a host, judged as Envoy does.
#[derive(Debug)]
pub struct Endpoint {
    transport: Transport,
    /// The host (or host/subset) it serves, named when a try gets no answer.
    host: std::sync::Arc<str>,
}

/// How an endpoint's tries reach it.
#[derive(Debug)]
enum Transport {
    /// Plain HTTP/2 through hyper's connection handle, called directly.
    Direct(Connection),
    /// TLS through a tonic channel, which carries the rustls setup.
    Tls(Lender),
}

impl Endpoint {
    /// Connects lazily: the caller starts while the host is down. An `https://` endpoint
    /// needs `tls`, and `tls` needs `https://` (no silent downgrade to plain text).
    pub fn new(
        host: &str,
        addr: &EndpointAddr,
        connect_timeout: Option<Duration>,
        tls: Option<&tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, String> {
        let bad = |e: &dyn std::fmt::Display| format!("endpoint {}: {e}", addr.uri);
        let connect_timeout = connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let https = addr.uri.starts_with("https://");
        let transport = match (tls, https) {
            (Some(tls), true) => {
                let endpoint = TonicEndpoint::from_shared(addr.uri.clone())
                    .map_err(|e| bad(&e))?
                    .tls_config(tls.clone())
                    .map_err(|e| bad(&e))?
                    .connect_timeout(connect_timeout);
                Transport::Tls(Lender {
                    channel: endpoint.connect_lazy(),
                    idle: Mutex::default(),
                })
            }
            (None, false) => {
                Transport::Direct(Connection::new(&addr.uri, connect_timeout).map_err(|e| bad(&e))?)
            }
            (Some(_), false) => return Err(bad(&"TLS is configured, so use https://")),
            (None, true) => {
                return Err(bad(
                    &"https:// needs TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE",
                ))
            }
        };
        Ok(Self {
            transport,
            host: host.into(),
        })
    }
}

/// How long opening a connection may take when the DestinationRule sets no
/// `connectTimeout` (Envoy's default, as Istio leaves it: 10 s).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Hop for Endpoint {
    async fn call(&self, request: Request, call: &mut Call) -> Result<Response, BoxError> {
        if let Some(fault) = crate::fault::apply(call.faults).await {
            call.judged = Some(classify::head(&fault));
            return Ok(fault);
        }
        let failed = |e| crate::error::upstream_failure(&self.host, e);
        let response = match &self.transport {
            Transport::Direct(connection) => {
                let answer = match connection.send(request) {
                    Ok(answer) => answer,
                    Err(request) => {
                        // Opening is rare and kept out of the call's future (see Hop).
                        Box::pin(connection.open()).await.map_err(failed)?;
                        connection
                            .send(request)
                            .map_err(|_| failed("the connection closed as it opened".into()))?
                    }
                };
                answer
                    .await
                    .map_err(|e| failed(Box::new(e)))?
                    .map(tonic::body::Body::new)
            }
            Transport::Tls(lender) => lender.call(request).await.map_err(failed)?,
        };
        let (response, judged) = judge(response, call.streaming).await?;
        call.judged = Some(judged);
        Ok(response)
    }
}

type Sender = hyper::client::conn::http2::SendRequest<tonic::body::Body>;

/// One HTTP/2 connection to a plain-text endpoint, opened by the first call and again
/// by the first call after it closed. A call is handed to hyper's handle at once,
/// without the task hop of a tonic channel (whose buffer passes every call to a worker
/// task of its own): the layers bench reads a bare connection 3 % faster than a tonic
/// channel at one call in flight, with 9 % less CPU per call.
#[derive(Debug)]
struct Connection {
    /// Scheme and authority of every request's URI (tonic's client sends the path only).
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    connect_timeout: Duration,
    /// The open connection's handle; `None` before the first call.
    sender: Mutex<Option<Sender>>,
    /// Held while opening, so calls that find the connection closed open it once.
    opening: tokio::sync::Mutex<()>,
}

impl Connection {
    fn new(uri: &str, connect_timeout: Duration) -> Result<Self, String> {
        let uri: http::Uri = uri
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        let authority = uri
            .authority()
            .filter(|a| a.port_u16().is_some())
            .cloned()
            .ok_or("an endpoint is http://host:port")?;
        Ok(Self {
            scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            authority,
            connect_timeout,
            sender: Mutex::default(),
            opening: tokio::sync::Mutex::const_new(()),
        })
    }

    /// Hands `request` to the open connection, or gives it back when there is none.
    #[allow(clippy::result_large_err)] // the request itself, handed back
    fn send(
        &self,
        mut request: Request,
    ) -> Result<impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>, Request>
    {
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_mut().filter(|s| !s.is_closed()) {
            Some(sender) => {
                let mut uri = std::mem::take(request.uri_mut()).into_parts();
                uri.scheme = Some(self.scheme.clone());
                uri.authority = Some(self.authority.clone());
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
        let (sender, connection) = hyper::client::conn::http2::Builder::new(BoxingExecutor)
            .handshake(hyper_util::rt::TokioIo::new(stream))
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

/// A tonic channel and its idle clones: a channel is called through `&mut` and each
/// clone allocates its own place in the connection's queue, so calls lend clones from
/// here instead of cloning the channel every time.
#[derive(Debug)]
struct Lender {
    channel: Channel,
    idle: Mutex<Vec<Channel>>,
}

impl Lender {
    async fn call(&self, request: Request) -> Result<Response, BoxError> {
        let mut channel = self.lend();
        // A call cut off (or failed) while it waits for a place in the connection's
        // queue drops its clone here: that clone still holds the wait, and taken back
        // it would keep a place nobody uses.
        channel.ready().await?;
        let answer = channel.call(request);
        self.take_back(channel);
        Ok(answer.await?)
    }

    /// An idle clone of the channel, or a new one.
    fn lend(&self) -> Channel {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        idle.unwrap_or_else(|| self.channel.clone())
    }

    /// Takes back a clone whose request was handed over (nothing of that call is left in
    /// it), up to [`MAX_IDLE_CHANNELS`].
    fn take_back(&self, channel: Channel) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_CHANNELS {
            idle.push(channel);
        }
    }
}

/// Idle clones kept per endpoint; more are dropped when given back.
const MAX_IDLE_CHANNELS: usize = 64;

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
