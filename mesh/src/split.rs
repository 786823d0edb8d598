//! Weighted routes (VirtualService `http[].route[].weight`): each call goes to one
//! destination, chosen with probability weight / total.
//!
//! Difference from Envoy: the destination is chosen per try, below the retry policy, so a
//! retry may go to another weighted destination (Envoy keeps the cluster of the first try).

use crate::error::BoxError;
use crate::{Call, Hop, Request, Response};
use rand::Rng;
use std::future::Future;

pub struct WeightedSplit<S> {
    targets: Vec<(u32, S)>,
    total: u32,
}

impl<S> WeightedSplit<S> {
    /// Targets with weight 0 never get a call; at least one weight must be > 0. One target
    /// gets every call without a roll.
    pub fn new(targets: Vec<(u32, S)>) -> Self {
        let total = targets.iter().map(|(w, _)| *w).sum();
        Self { targets, total }
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

impl<S: Hop> Hop for WeightedSplit<S> {
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        let chosen = match (self.targets.len(), self.total) {
            (1, _) => 0,
            (_, 0) => self.pick(0),
            _ => self.pick(rand::thread_rng().gen_range(0..self.total)),
        };
        self.targets[chosen].1.call(request, call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{call_hop, ok_response, request};
    use crate::TowerHop;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting(counter: Arc<AtomicUsize>) -> impl Hop {
        TowerHop(tower::service_fn(move |_r: Request| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, BoxError>(ok_response()) }
        }))
    }

    #[tokio::test]
    async fn splits_by_weight() {
        let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let split = WeightedSplit::new(vec![(25, counting(a.clone())), (75, counting(b.clone()))]);
        for _ in 0..20_000 {
            call_hop(&split, request()).await.expect("ok");
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
        let noop = || counting(Arc::default());
        let split = WeightedSplit::new(vec![(0, noop()), (10, noop()), (90, noop())]);
        assert_eq!(split.pick(0), 1);
        assert_eq!(split.pick(9), 1);
        assert_eq!(split.pick(10), 2);
        assert_eq!(split.pick(99), 2);
    }
}
