//! A request body that can be sent again (linkerd's `ReplayBody` idea): the first try
//! streams the caller's body straight through while a copy of what was read is kept; a
//! retry sends that copy and then continues from wherever the previous try stopped. A try
//! dropped before it read the body (a connect failure) hands the unread body back. So the
//! first try costs no buffering, and every retry sends the same bytes.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tonic::body::Body;

#[derive(Default)]
struct Shared {
    /// The part of the caller's body no try has read yet.
    rest: Option<Body>,
    /// What tries have read so far.
    read: BytesMut,
    trailers: Option<HeaderMap>,
    /// The caller's body has ended.
    ended: bool,
}

/// The source of every try's body.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    /// Told when a try hands the body back or reads it to its end.
    returned: Arc<tokio::sync::Notify>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replay {
    pub fn new(body: Body) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                rest: Some(body),
                ..Shared::default()
            })),
            returned: Arc::default(),
        }
    }

    /// Waits, at most `within`, until a new try can get the whole body: the answer to a
    /// try can come before the HTTP/2 client has finished with its body (a server may
    /// answer before it read the request's end), and a retry must not be lost to that.
    pub async fn wait_available(&self, within: std::time::Duration) -> bool {
        let returned = self.returned.notified();
        tokio::pin!(returned);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            returned.as_mut().enable();
            if self.available() {
                return true;
            }
            if tokio::time::timeout_at(deadline, returned.as_mut())
                .await
                .is_err()
            {
                return self.available();
            }
            returned.set(self.returned.notified());
        }
    }

    /// Whether a new try can get the whole body (no earlier try still holds the rest).
    pub fn available(&self) -> bool {
        let shared = lock(&self.shared);
        shared.rest.is_some() || shared.ended
    }

    /// The body of the next try.
    pub fn body(&self) -> Body {
        let mut shared = lock(&self.shared);
        let replay = shared.read.clone().freeze();
        let rest = shared.rest.take();
        Body::new(TryBody {
            shared: self.shared.clone(),
            returned: self.returned.clone(),
            replay: (!replay.is_empty()).then_some(replay),
            rest,
            done: false,
        })
    }
}

struct TryBody {
    shared: Arc<Mutex<Shared>>,
    returned: Arc<tokio::sync::Notify>,
    /// What earlier tries read, sent first.
    replay: Option<Bytes>,
    /// The unread caller's body, while this try holds it.
    rest: Option<Body>,
    done: bool,
}

impl HttpBody for TryBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if let Some(replay) = this.replay.take() {
            return Poll::Ready(Some(Ok(Frame::data(replay))));
        }
        if let Some(rest) = this.rest.as_mut() {
            return match Pin::new(rest).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let mut shared = lock(&this.shared);
                    if let Some(data) = frame.data_ref() {
                        shared.read.extend_from_slice(data);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        shared.trailers = Some(trailers.clone());
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.rest = None;
                    lock(&this.shared).ended = true;
                    this.returned.notify_waiters();
                    this.done = true;
                    Poll::Ready(None)
                }
            };
        }
        // Replaying an ended body: its trailers (if any), then the end.
        if this.done {
            return Poll::Ready(None);
        }
        this.done = true;
        match lock(&this.shared).trailers.clone() {
            Some(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.replay, &self.rest) {
            (None, Some(rest)) => rest.is_end_stream(),
            (None, None) => self.done,
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.replay, &self.rest) {
            (None, Some(rest)) => rest.size_hint(),
            (Some(replay), None) if lock(&self.shared).ended => {
                SizeHint::with_exact(replay.len() as u64)
            }
            _ => SizeHint::default(),
        }
    }
}

impl Drop for TryBody {
    fn drop(&mut self) {
        // Hand the unread rest back for the next try.
        if let Some(rest) = self.rest.take() {
            lock(&self.shared).rest = Some(rest);
            self.returned.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn source() -> Body {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
        ];
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn every_try_sends_the_same_bytes() {
        let replay = Replay::new(source());
        for _ in 0..3 {
            assert!(replay.available());
            let body = replay.body().collect().await.expect("body").to_bytes();
            assert_eq!(body, Bytes::from_static(b"hello world"));
        }
    }

    #[tokio::test]
    async fn an_unread_or_half_read_body_is_handed_back() {
        let replay = Replay::new(source());
        drop(replay.body()); // a connect failure: never read
        let mut second = replay.body();
        let first_frame = second.frame().await.expect("a frame").expect("ok");
        assert_eq!(
            first_frame.into_data().ok(),
            Some(Bytes::from_static(b"hello "))
        );
        drop(second); // half read
        let third = replay.body().collect().await.expect("body").to_bytes();
        assert_eq!(third, Bytes::from_static(b"hello world"));
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_body_to_come_back() {
        let replay = Replay::new(source());
        let held = replay.body();
        assert!(!replay.wait_available(Duration::from_millis(20)).await);
        let waiting = tokio::spawn({
            let replay = replay.clone();
            async move { replay.wait_available(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held); // the HTTP/2 client is done with the first try's body
        assert!(waiting.await.expect("joined"));
    }

    #[tokio::test]
    async fn unavailable_while_a_try_holds_the_rest() {
        let replay = Replay::new(source());
        let held = replay.body();
        assert!(!replay.available());
        drop(held);
        assert!(replay.available());
    }
}
