//! parkingctl against the gateway: every command, tables and --json, and clear errors
//! with exit code 1 when the server refuses.
#![allow(clippy::unwrap_used)]

use parking_e2e::{bin_dir, day, eventually, Backend, Cluster};
use serde_json::Value;
use std::time::Duration;

struct Ctl {
    server: String,
}

impl Ctl {
    /// Runs parkingctl; returns (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(bin_dir().join("parkingctl"))
            .arg("--server")
            .arg(&self.server)
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.run(&all).await;
        assert_eq!(code, 0, "parkingctl {args:?} failed: {err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_through_the_gateway() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let ctl = Ctl {
        server: format!("http://127.0.0.1:{}", c.start_gateway().await),
    };
    let date = day(4);

    let r = ctl
        .json(&[
            "reserve",
            "--member",
            "3117",
            "--date",
            &date,
            "--request-id",
            "ctl-1",
        ])
        .await;
    assert_eq!(r["state"], "REQUESTED");
    assert_eq!(r["memberId"], 3117);
    let id = r["id"].as_i64().unwrap().to_string();

    let status = eventually(Duration::from_secs(30), "delivery requested", || {
        let (ctl, id) = (&ctl, id.clone());
        async move {
            let (code, out, _) = ctl.run(&["--json", "status", &id]).await;
            let v: Value = serde_json::from_str(out.trim()).ok()?;
            (code == 0 && v["stage"] == "STAGE_DELIVERY_REQUESTED").then_some(v)
        }
    })
    .await;
    assert!(status["history"].as_array().unwrap().len() >= 3, "{status}");

    let list = ctl
        .json(&["deliveries", "--date", &date, "--state", "requested"])
        .await;
    let delivery = list["deliveries"][0]["id"].as_i64().unwrap().to_string();
    let (code, out, _) = ctl.run(&["ship", &delivery]).await;
    assert_eq!(code, 0);
    assert!(out.contains("SHIPPED"), "{out}");

    let (code, out, _) = ctl.run(&["capacity", &date]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("DATE") && out.contains(&date), "{out}");
    let set = ctl.json(&["capacity", &date, "--set", "7"]).await;
    assert_eq!(
        (set["capacity"].as_i64(), set["occupied"].as_i64()),
        (Some(7), Some(1))
    );

    let (code, out, _) = ctl.run(&["list", "--member", "3117"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines().next().unwrap().starts_with("ID") && out.contains("CONFIRMED"),
        "{out}"
    );

    // The watch prints the current status at once (and would go on until Ctrl-C).
    let mut watch = tokio::process::Command::new(bin_dir().join("parkingctl"))
        .args(["--server", &ctl.server, "--json", "status", &id, "--watch"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["stage"], "STAGE_SHIPPED");
    watch.kill().await.unwrap();

    // Refusals: exit code 1, the gRPC code and the server's message.
    let (code, _, err) = ctl.run(&["cancel", "999999"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("NotFound") && err.contains("999999"), "{err}");
    let (code, _, err) = ctl
        .run(&["reserve", "--member", "0", "--date", &date])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidArgument") && err.contains("member_id"),
        "{err}"
    );
    let bad = tokio::process::Command::new(bin_dir().join("parkingctl"))
        .args(["--server", "not a url", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a URL"));
}
