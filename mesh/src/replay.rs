//! A request body that can be sent again (linkerd's `ReplayBody` idea): the first try
//! streams the caller's body straight through while a copy of what was read is kept; a
//! retry sends that copy and then continues from wherever the previous try stopped. A try
//! dropped before it read the body (a connect failure) hands the unread body back. So the
//! first try costs no buffering, and every retry sends the same bytes.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tonic::body::Body;

/// What read chunks are kept in: a unary request is one chunk.
type Chunks = smallvec::SmallVec<[Bytes; 2]>;

#[derive(Default)]
struct Shared {
    /// The part of the caller's body no try has read yet.
    rest: Option<Body>,
    /// What tries have read so far, the chunks as they came (shared, not copied).
    read: Chunks,
    trailers: Option<HeaderMap>,
    /// The caller's body has ended.
    ended: bool,
}

/// The source of every try's body.
#[derive(Clone)]
pub struct Replay(Arc<Inner>);

struct Inner {
    shared: Mutex<Shared>,
    /// Told when a try hands the body back or reads it to its end.
    returned: tokio::sync::Notify,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replay {
    pub fn new(body: Body) -> Self {
        Self(Arc::new(Inner {
            shared: Mutex::new(Shared {
                rest: Some(body),
                ..Shared::default()
            }),
            returned: tokio::sync::Notify::new(),
        }))
    }

    /// Waits, at most `within`, until a new try can get the whole body: the answer to a
    /// try can come before the HTTP/2 client has finished with its body (a server may
    /// answer before it read the request's end), and a retry must not be lost to that.
    pub async fn wait_available(&self, within: std::time::Duration) -> bool {
        let returned = self.0.returned.notified();
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
            returned.set(self.0.returned.notified());
        }
    }

    /// Whether a new try can get the whole body (no earlier try still holds the rest).
    pub fn available(&self) -> bool {
        let shared = lock(&self.0.shared);
        shared.rest.is_some() || shared.ended
    }

    /// The body of the next try.
    pub fn body(&self) -> Body {
        let mut shared = lock(&self.0.shared);
        let replay = shared.read.clone().into_iter();
        let rest = shared.rest.take();
        Body::new(TryBody {
            inner: self.0.clone(),
            replay,
            rest,
            done: false,
        })
    }
}

struct TryBody {
    inner: Arc<Inner>,
    /// What earlier tries read, sent first.
    replay: smallvec::IntoIter<[Bytes; 2]>,
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
        if let Some(replay) = this.replay.next() {
            return Poll::Ready(Some(Ok(Frame::data(replay))));
        }
        if let Some(rest) = this.rest.as_mut() {
            return match Pin::new(rest).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let mut shared = lock(&this.inner.shared);
                    if let Some(data) = frame.data_ref() {
                        shared.read.push(data.clone());
                    } else if let Some(trailers) = frame.trailers_ref() {
                        shared.trailers = Some(trailers.clone());
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.rest = None;
                    lock(&this.inner.shared).ended = true;
                    this.inner.returned.notify_waiters();
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
        match lock(&this.inner.shared).trailers.clone() {
            Some(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match (self.replay.as_slice().is_empty(), &self.rest) {
            (true, Some(rest)) => rest.is_end_stream(),
            (true, None) => self.done,
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let replay = self.replay.as_slice();
        match (replay.is_empty(), &self.rest) {
            (true, Some(rest)) => rest.size_hint(),
            (false, None) if lock(&self.inner.shared).ended => {
                SizeHint::with_exact(replay.iter().map(|b| b.len() as u64).sum())
            }
            _ => SizeHint::default(),
        }
    }
}

impl Drop for TryBody {
    fn drop(&mut self) {
        // Hand the unread rest back for the next try.
        if let Some(rest) = self.rest.take() {
            lock(&self.inner.shared).rest = Some(rest);
            self.inner.returned.notify_waiters();
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
