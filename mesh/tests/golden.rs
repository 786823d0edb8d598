//! Golden tests: examples from Istio's own documentation, compiled for their host. A
//! supported example must compile to the policy in its `.golden` file; a refused one must
//! fail with the message there (which names the field). `BLESS=1 cargo test -p mesh
//! --test golden` rewrites the `.golden` files; review the diff before committing.
#![allow(clippy::unwrap_used)]

use mesh::istio::Resources;
use std::path::Path;

fn render(yaml: &str) -> String {
    let host = yaml
        .lines()
        .find_map(|l| l.strip_prefix("# host: "))
        .expect("each golden file names its host")
        .trim()
        .to_owned();
    match Resources::parse(yaml).and_then(|r| mesh::policy::compile(&r, &host)) {
        Ok(policy) => format!("{policy:#?}\n"),
        Err(error) => format!("REFUSED: {error}\n"),
    }
}

#[test]
fn istio_doc_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var("BLESS").is_ok();
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let got = render(&std::fs::read_to_string(&path).unwrap());
        let golden = path.with_extension("golden");
        if bless {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with BLESS=1", golden.display()));
        assert_eq!(
            got,
            want,
            "{} differs from {}",
            path.display(),
            golden.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} examples found");
}

/// The policy this repository ships for host `delivery` compiles as intended.
#[test]
fn shipped_delivery_policy_compiles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/istio");
    let files = vec![
        root.join("delivery-destinationrule.yaml"),
        root.join("delivery-virtualservice.yaml"),
    ];
    let policy = mesh::policy::compile(&Resources::load(&files).unwrap(), "delivery").unwrap();
    let route = &policy.routes[0];
    assert_eq!(
        route.timeout.timeout,
        Some(std::time::Duration::from_secs(3))
    );
    assert_eq!(route.retry.attempts, 2);
    let traffic = &policy.traffic[&None];
    assert_eq!(
        (traffic.pool.max_requests, traffic.pool.max_pending),
        (32, 16)
    );
    let outlier = traffic.outlier.unwrap();
    assert_eq!(
        (outlier.consecutive_5xx, outlier.consecutive_gateway),
        (Some(5), Some(3))
    );
    assert_eq!(outlier.max_ejection_percent, 100);
}
