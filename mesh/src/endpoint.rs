//! One endpoint of a host: a tonic `Channel` (one HTTP/2 connection, connected lazily)
//! whose unary responses are buffered and classified (see [`crate::classify`]). Injected
//! faults ([`crate::fault`]) are applied here, inside the try.

use crate::classify::{self, Judged};
use crate::error::BoxError;
use crate::{Call, Hop, Request, Response};
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

/// A classified endpoint.
#[derive(Debug)]
pub struct Endpoint {
    channel: Channel,
    /// Idle clones of `channel`: a tonic channel is called through `&mut` and each clone
    /// allocates its own place in the connection's queue, so calls lend clones from here
    /// instead of cloning the channel every time.
    idle: Mutex<Vec<Channel>>,
    /// The host (or host/subset) it serves, named when a try gets no answer.
    host: std::sync::Arc<str>,
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
        let mut endpoint = TonicEndpoint::from_shared(addr.uri.clone())
            .map_err(|e| format!("endpoint {}: {e}", addr.uri))?;
        let https = addr.uri.starts_with("https://");
        match (tls, https) {
            (Some(tls), true) => {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| format!("endpoint {}: {e}", addr.uri))?;
            }
            (None, false) => {}
            (Some(_), false) => {
                return Err(format!(
                    "endpoint {}: TLS is configured, so use https://",
                    addr.uri
                ))
            }
            (None, true) => {
                return Err(format!(
                    "endpoint {}: https:// needs TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE",
                    addr.uri
                ))
            }
        }
        endpoint = endpoint.connect_timeout(connect_timeout.unwrap_or(Duration::from_secs(10)));
        Ok(Self {
            channel: endpoint.connect_lazy(),
            idle: Mutex::default(),
            host: host.into(),
        })
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

impl Hop for Endpoint {
    async fn call(&self, request: Request, call: &mut Call) -> Result<Response, BoxError> {
        if let Some(fault) = crate::fault::apply(call.faults).await {
            call.judged = Some(classify::head(&fault));
            return Ok(fault);
        }
        let failed = |e| crate::error::upstream_failure(&self.host, Box::new(e));
        let mut channel = self.lend();
        // A call cut off (or failed) while it waits for a place in the connection's
        // queue drops its clone here: that clone still holds the wait, and taken back
        // it would keep a place nobody uses.
        channel.ready().await.map_err(failed)?;
        let answer = channel.call(request);
        self.take_back(channel);
        let response = answer.await.map_err(failed)?;
        let (response, judged) = judge(response, call.streaming).await?;
        call.judged = Some(judged);
        Ok(response)
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
