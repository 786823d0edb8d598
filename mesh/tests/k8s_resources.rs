//! Every Istio DestinationRule and VirtualService this repository ships loads in the mesh
//! crate, with unknown fields refused and named (`mesh::istio::Resources::parse`), and
//! compiles for its host (`mesh::policy::compile`): the YAML files under k8s/ as written,
//! and every overlay as `kubectl kustomize` renders it (patches included, e.g. the canary's
//! subsets and weights). scripts/check-manifests.sh runs the other manifest checks.
#![allow(clippy::unwrap_used)]

use mesh::istio::{host_matches, Resources};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const KINDS: [&str; 2] = ["DestinationRule", "VirtualService"];

fn k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// The DestinationRule / VirtualService documents of a (multi-document) YAML text, each
/// re-serialised on its own; other kinds, lists (JSON patches) and empty documents are
/// skipped. `what` names the source in failures.
fn istio_documents(text: &str, what: &str) -> Vec<String> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{what}: document {}: not YAML: {e}", i + 1));
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if KINDS.contains(&kind) {
            docs.push(serde_yaml_ng::to_string(&value).unwrap());
        }
    }
    docs
}

/// Loads the documents (each one alone, so a failure names its source) and merges them.
fn load(docs: &[(String, String)]) -> Resources {
    let mut all = Resources::default();
    for (what, doc) in docs {
        let found = Resources::parse(doc).unwrap_or_else(|e| panic!("{what}: {e}"));
        all.destination_rules.extend(found.destination_rules);
        all.virtual_services.extend(found.virtual_services);
    }
    all
}

/// Compiles the policy of every host a DestinationRule or an in-mesh VirtualService names.
/// A VirtualService bound to an ingress Gateway is loaded (above) but not compiled: the
/// mesh applies only sidecar routes in-process.
fn compile_all(resources: &Resources, what: &str) -> BTreeMap<String, mesh::policy::HostPolicy> {
    let mut hosts: Vec<String> = resources
        .destination_rules
        .iter()
        .map(|(_, dr)| dr.host.clone())
        .collect();
    for (_, vs) in &resources.virtual_services {
        if vs.gateways.iter().all(|g| g == "mesh") {
            hosts.extend(vs.hosts.iter().cloned());
        }
    }
    hosts.sort();
    hosts.dedup();
    hosts
        .into_iter()
        .map(|host| {
            let policy = mesh::policy::compile(resources, &host)
                .unwrap_or_else(|e| panic!("{what}: host {host}: {e}"));
            (host, policy)
        })
        .collect()
}

#[test]
fn source_files_load_and_compile() {
    let mut files = Vec::new();
    yaml_files(&k8s(), &mut files);
    // One set per directory: a DestinationRule's subsets and the VirtualService using them
    // may sit in different files of one directory.
    let mut by_dir: BTreeMap<PathBuf, Vec<(String, String)>> = BTreeMap::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let what = path.strip_prefix(k8s()).unwrap().display().to_string();
        for doc in istio_documents(&text, &what) {
            by_dir
                .entry(path.parent().unwrap().to_owned())
                .or_default()
                .push((format!("k8s/{what}"), doc));
        }
    }
    let mut loaded = Vec::new();
    for (dir, docs) in &by_dir {
        let resources = load(docs);
        compile_all(&resources, &dir.display().to_string());
        loaded.extend(docs.iter().map(|(what, _)| what.clone()));
    }
    for expected in [
        "k8s/istio/delivery-destinationrule.yaml",
        "k8s/istio/delivery-virtualservice.yaml",
        "k8s/istio/ingress.yaml",
    ] {
        assert!(
            loaded.iter().any(|w| w == expected),
            "{expected} not found among {loaded:?}"
        );
    }
}

/// kubectl: $KUBECTL, else the one scripts/tools.sh installs, else the PATH's.
fn kubectl() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../var/tools-venv/bin/kubectl");
    let candidates = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("kubectl")]);
    for candidate in candidates {
        let works = Command::new(&candidate)
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return candidate;
        }
    }
    panic!(
        "kubectl not found: run `bash scripts/tools.sh` (installs it in var/tools-venv, as \
         `make test` does) or set KUBECTL"
    );
}

fn render(overlay: &Path) -> String {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(overlay)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        overlay.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn rendered_overlays_load_and_compile() {
    let mut overlays: Vec<_> = std::fs::read_dir(k8s().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    overlays.sort();
    let names: Vec<_> = overlays
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["canary", "dev", "prod"]);
    for (overlay, name) in overlays.iter().zip(&names) {
        let what = format!("k8s/overlays/{name} (rendered)");
        let docs: Vec<_> = istio_documents(&render(overlay), &what)
            .into_iter()
            .enumerate()
            .map(|(i, doc)| {
                (
                    format!("{what}, DestinationRule/VirtualService #{}", i + 1),
                    doc,
                )
            })
            .collect();
        let resources = load(&docs);
        let policies = compile_all(&resources, &what);
        let delivery = policies
            .get("delivery")
            .unwrap_or_else(|| panic!("{what}: no policy for host delivery"));
        // The shipped traffic policy survives kustomize unchanged.
        assert_eq!(delivery.routes.len(), 1, "{what}");
        assert_eq!(delivery.routes[0].retry.attempts, 2, "{what}");
        assert!(delivery.traffic[&None].outlier.is_some(), "{what}");
        let destinations = &delivery.routes[0].destinations;
        if name == "canary" {
            assert_eq!(
                destinations,
                &[(Some("v1".to_owned()), 90), (Some("v2".to_owned()), 10)],
                "{what}"
            );
            for subset in ["v1", "v2"] {
                assert_eq!(
                    delivery.subset_labels[subset]
                        .get("version")
                        .map(String::as_str),
                    Some(subset),
                    "{what}"
                );
            }
        } else {
            assert_eq!(destinations, &[(None, 100)], "{what}");
        }
        // The ingress route is loaded too, bound to its Gateway.
        assert!(
            resources
                .virtual_services
                .iter()
                .any(|(_, vs)| vs.gateways == ["parking-ingress"]
                    && vs.http[0].route[0].destination.host.starts_with("gateway.")
                    && host_matches(&vs.http[0].route[0].destination.host, "gateway")),
            "{what}: the ingress VirtualService is missing"
        );
    }
}

/// The loader used above refuses a field it does not know, naming it (so the tests above
/// would catch a typo in any shipped resource).
#[test]
fn unknown_fields_are_refused_and_named() {
    let text = std::fs::read_to_string(k8s().join("istio/delivery-destinationrule.yaml"))
        .unwrap()
        .replace("consecutive5xxErrors", "consecutive5xxError");
    let error = Resources::parse(&text).unwrap_err().to_string();
    assert!(
        error.contains("spec.trafficPolicy.outlierDetection")
            && error.contains("consecutive5xxError"),
        "{error}"
    );
    let text = std::fs::read_to_string(k8s().join("istio/delivery-virtualservice.yaml"))
        .unwrap()
        .replace("perTryTimeout", "perTryTimout");
    let error = Resources::parse(&text).unwrap_err().to_string();
    assert!(error.contains("perTryTimout"), "{error}");
}
