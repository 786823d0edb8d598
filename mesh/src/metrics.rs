//! Prometheus metrics of the mesh, per destination host: retries, ejections, pool
//! overflows, fail-fast answers and circuit state.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Cheap to clone; every clone updates the same series.
#[derive(Clone, Debug, Default)]
pub struct MeshMetrics {
    retries: Family<Labels, Counter>,
    ejections: Family<Labels, Counter>,
    overflows: Family<Labels, Counter>,
    fail_fast: Family<Labels, Counter>,
    ejected: Family<Labels, Gauge>,
    circuit_open: Family<Labels, Gauge>,
}

fn host(host: &str) -> Labels {
    vec![("host".to_owned(), host.to_owned())]
}

impl MeshMetrics {
    /// Registers every series under `mesh_`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_retries",
            "Retries sent to a host",
            self.retries.clone(),
        );
        registry.register(
            "mesh_ejections",
            "Endpoints ejected by outlier detection",
            self.ejections.clone(),
        );
        registry.register(
            "mesh_overflows",
            "Calls refused because the connection pool limits were full",
            self.overflows.clone(),
        );
        registry.register(
            "mesh_fail_fast",
            "Calls answered by the mesh without calling the host (circuit open or overflow)",
            self.fail_fast.clone(),
        );
        registry.register(
            "mesh_ejected_endpoints",
            "Endpoints of a host currently ejected",
            self.ejected.clone(),
        );
        registry.register(
            "mesh_circuit_open",
            "1 while every endpoint of a host is ejected",
            self.circuit_open.clone(),
        );
    }

    /// Creates a host's series at zero, so dashboards and alerts see them before the first
    /// retry or ejection (an absent series is not a zero in PromQL).
    pub fn touch(&self, h: &str) {
        let l = host(h);
        let _ = self.retries.get_or_create(&l);
        let _ = self.ejections.get_or_create(&l);
        let _ = self.overflows.get_or_create(&l);
        let _ = self.ejected.get_or_create(&l);
        let _ = self.circuit_open.get_or_create(&l);
    }

    pub fn retry(&self, h: &str) {
        self.retries.get_or_create(&host(h)).inc();
    }

    pub fn ejection(&self, h: &str) {
        self.ejections.get_or_create(&host(h)).inc();
    }

    pub fn overflow(&self, h: &str) {
        self.overflows.get_or_create(&host(h)).inc();
        self.fail_fast(h, "overflow");
    }

    pub fn fail_fast(&self, h: &str, reason: &str) {
        let mut labels = host(h);
        labels.push(("reason".to_owned(), reason.to_owned()));
        self.fail_fast.get_or_create(&labels).inc();
    }

    pub fn set_ejected(&self, h: &str, ejected: usize, total: usize) {
        self.ejected.get_or_create(&host(h)).set(ejected as i64);
        self.circuit_open
            .get_or_create(&host(h))
            .set(i64::from(total > 0 && ejected == total));
    }

    /// Current values, for tests: (retries, ejections, overflows, circuit_open).
    pub fn snapshot(&self, h: &str) -> (u64, u64, u64, i64) {
        let l = host(h);
        (
            self.retries.get_or_create(&l).get(),
            self.ejections.get_or_create(&l).get(),
            self.overflows.get_or_create(&l).get(),
            self.circuit_open.get_or_create(&l).get(),
        )
    }
}
