//! VirtualService `http[]` routes: the first route whose `match` accepts the call serves
//! it (a route without `match` accepts every call). Match blocks are ORed, the conditions
//! in a block ANDed, as in Istio; `uri` and `headers` with `exact` or `prefix`.

use crate::error::{self, BoxError, NoRoute};
use crate::{Call, Hop, Request, Response};
use futures::future::Either;
use std::future::Future;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => value == v,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// One `match` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchBlock {
    pub uri: Option<StringMatch>,
    pub headers: Vec<(http::HeaderName, StringMatch)>,
}

impl MatchBlock {
    fn accepts(&self, request: &Request) -> bool {
        self.uri
            .as_ref()
            .is_none_or(|m| m.matches(request.uri().path()))
            && self.headers.iter().all(|(name, m)| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| m.matches(v))
            })
    }
}

pub struct Router<R> {
    host: String,
    /// (match blocks, route stack); empty blocks accept everything.
    routes: Vec<(Vec<MatchBlock>, R)>,
}

impl<R> Router<R> {
    pub fn new(host: &str, routes: Vec<(Vec<MatchBlock>, R)>) -> Self {
        Self {
            host: host.to_owned(),
            routes,
        }
    }
}

impl<R: Hop> Hop for Router<R> {
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        let chosen = self
            .routes
            .iter()
            .find(|(blocks, _)| blocks.is_empty() || blocks.iter().any(|b| b.accepts(&request)))
            .map(|(_, route)| route);
        // The route's future as it is, not inside one of ours: an async block would keep
        // room for the request it hands on (see Hop).
        match chosen {
            Some(route) => Either::Left(route.call(request, call)),
            None => Either::Right(std::future::ready(Err(error::no_route(NoRoute {
                host: self.host.clone(),
                path: request.uri().path().to_owned(),
            })))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{status_response, Outcome};
    use crate::testing::{call_hop, call_judged, request};
    use crate::TowerHop;
    use tonic::Code;

    fn answering(code: Code) -> impl Hop {
        TowerHop(tower::service_fn(move |_r: Request| async move {
            Ok::<_, BoxError>(status_response(code, ""))
        }))
    }

    #[tokio::test]
    async fn first_matching_route_wins() {
        let cancel = MatchBlock {
            uri: Some(StringMatch::Exact(
                "/parking.v1.TicketDeliveryService/CancelDelivery".into(),
            )),
            headers: vec![],
        };
        let other = MatchBlock {
            uri: Some(StringMatch::Prefix(
                "/parking.v1.TicketDeliveryService/".into(),
            )),
            headers: vec![(
                http::HeaderName::from_static("x-test"),
                StringMatch::Exact("yes".into()),
            )],
        };
        let router = Router::new(
            "delivery",
            vec![
                (vec![other], answering(Code::Internal)),
                (vec![cancel], answering(Code::NotFound)),
            ],
        );
        assert_eq!(
            call_judged(&router, request()).await,
            Some(Outcome::Grpc(Code::NotFound))
        );
        let mut with_header = request();
        with_header
            .headers_mut()
            .insert("x-test", http::HeaderValue::from_static("yes"));
        assert_eq!(
            call_judged(&router, with_header).await,
            Some(Outcome::Grpc(Code::Internal))
        );

        let none = Router::new(
            "delivery",
            vec![(
                vec![MatchBlock {
                    uri: Some(StringMatch::Exact("/x".into())),
                    headers: vec![],
                }],
                answering(Code::Ok),
            )],
        );
        let err = call_hop(&none, request()).await.expect_err("no route");
        assert!(crate::error::find::<NoRoute>(&*err).is_some());
    }
}
