//! Weighted routes (VirtualService `http[].route[].weight`): each call goes to one
//! destination, chosen with probability weight / total.
//!
//! Difference from Envoy: the destination is chosen per try, below the retry policy, so a
//! retry may go to another weighted destination (Envoy keeps the cluster of the first try).

use crate::error::BoxError;
use crate::{BoxFuture, MeshService, Request, Response};
use rand::Rng;
use std::task::{Context, Poll};
use tower::{Service, ServiceExt};

#[derive(Clone)]
pub struct WeightedSplit {
    /// Shared: the split is cloned per call.
    targets: std::sync::Arc<[(u32, MeshService)]>,
    total: u32,
}

impl WeightedSplit {
    /// Targets with weight 0 never get a call; at least one weight must be > 0.
    pub fn new(targets: Vec<(u32, MeshService)>) -> Self {
        let total = targets.iter().map(|(w, _)| *w).sum();
        Self {
            targets: targets.into(),
            total,
        }
    }

    fn pick(&self, roll: u32) -> usize {
        let mut left = roll;
        for (i, (weight, _)) in self.targets.iter().enumerate() {
            if left < *weight {
                return i;
            }
            left -= weight;
        }
        self.targets.len().saturating_sub(1)
    }
}

impl Service<Request> for WeightedSplit {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let roll = if self.total == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..self.total)
        };
        let target = self.targets[self.pick(roll)].1.clone();
        Box::pin(target.oneshot(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ok_response, request};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting(counter: Arc<AtomicUsize>) -> MeshService {
        MeshService::new(tower::service_fn(move |_r: Request| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, BoxError>(ok_response()) }
        }))
    }

    #[tokio::test]
    async fn splits_by_weight() {
        let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut split =
            WeightedSplit::new(vec![(25, counting(a.clone())), (75, counting(b.clone()))]);
        for _ in 0..20_000 {
            split.call(request()).await.expect("ok");
        }
        let share = a.load(Ordering::Relaxed) as f64 / 200.0;
        assert!((share - 25.0).abs() < 1.5, "v2 got {share:.2} %");
        assert_eq!(
            a.load(Ordering::Relaxed) + b.load(Ordering::Relaxed),
            20_000
        );
    }

    #[test]
    fn pick_boundaries() {
        let noop = MeshService::new(tower::service_fn(|_r: Request| async {
            Ok::<_, BoxError>(ok_response())
        }));
        let split = WeightedSplit::new(vec![(0, noop.clone()), (10, noop.clone()), (90, noop)]);
        assert_eq!(split.pick(0), 1);
        assert_eq!(split.pick(9), 1);
        assert_eq!(split.pick(10), 2);
        assert_eq!(split.pick(99), 2);
    }
}
