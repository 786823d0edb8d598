//! parkingctl against the gateway: `users add` writes the accounts file the gateway
//! starts with, `login` per role, every command, tables and --json, and clear errors with
//! exit code 1 when the server refuses.
#![allow(clippy::unwrap_used)]

use parking_e2e::{bin_dir, day, eventually, Backend, Cluster};
use serde_json::Value;
use std::time::Duration;

struct Ctl {
    server: String,
    /// Where this user's `login` keeps the token.
    token_file: std::path::PathBuf,
}

impl Ctl {
    /// Runs parkingctl; returns (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &[], "").await
    }

    /// Runs parkingctl with extra environment and standard input.
    async fn run_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: &str,
    ) -> (i32, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(bin_dir().join("parkingctl"))
            .arg("--server")
            .arg(&self.server)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args)
            .env_remove("PARKING_PASSWORD")
            .env_remove("PARKING_TOKEN")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
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
    // `users add` writes the accounts the gateway starts with: a password from standard
    // input, one from PARKING_PASSWORD.
    let accounts = c.folder().join("ctl-accounts.yaml");
    let file = accounts.to_str().unwrap();
    let nobody = Ctl {
        server: String::new(),
        token_file: c.folder().join("no-token"),
    };
    for (name, role) in [
        ("3117", "employee"),
        ("manager", "manager"),
        ("admin", "admin"),
    ] {
        let (code, out, err) = nobody
            .run_with(
                &[
                    "users",
                    "add",
                    name,
                    "--role",
                    role,
                    "--file",
                    file,
                    "--password-stdin",
                ],
                &[],
                &format!("{name} pass phrase\n"),
            )
            .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(name), "{out}");
    }
    let (code, _, _) = nobody
        .run_with(
            &[
                "users", "add", "ops-bot", "--client", "--role", "manager", "--file", file,
            ],
            &[("PARKING_PASSWORD", "ops-bot secret!")],
            "",
        )
        .await;
    assert_eq!(code, 0);
    let written = std::fs::read_to_string(&accounts).unwrap();
    assert!(
        written.contains("$argon2id$") && !written.contains("pass phrase"),
        "{written}"
    );
    let listed = nobody.json(&["users", "list", "--file", file]).await;
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 4, "{listed}");
    let (code, _, err) = nobody
        .run_with(
            &["users", "add", "x", "--role", "root", "--file", file],
            &[],
            "",
        )
        .await;
    assert_eq!(code, 2, "{err}");

    let server = format!(
        "http://127.0.0.1:{}",
        c.start_gateway_with(&[("ACCOUNTS_FILE", file)]).await
    );
    let as_user = |name: &str| Ctl {
        server: server.clone(),
        token_file: c.folder().join(format!("token-{name}")),
    };
    let (ctl, manager, admin) = (as_user("3117"), as_user("manager"), as_user("admin"));
    for (who, name) in [(&ctl, "3117"), (&manager, "manager"), (&admin, "admin")] {
        let (code, out, err) = who
            .run_with(
                &["login", "--user", name, "--password-stdin"],
                &[],
                &format!("{name} pass phrase\n"),
            )
            .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("logged in as"), "{out}");
    }
    let (code, _, err) = as_user("intruder")
        .run_with(
            &["login", "--user", "3117", "--password-stdin"],
            &[],
            "guess\n",
        )
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("wrong user name or password"), "{err}");
    let (code, _, err) = as_user("intruder").run(&["list"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Unauthenticated"), "{err}");

    // A user added while the gateway runs can log in a moment later (the file is watched);
    // a broken file is refused and the accounts in force stay.
    let (code, _, err) = nobody
        .run_with(
            &["users", "add", "7", "--role", "employee", "--file", file],
            &[("PARKING_PASSWORD", "seven pass phrase")],
            "",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let newcomer = as_user("7");
    eventually(Duration::from_secs(15), "the new user can log in", || {
        let newcomer = &newcomer;
        async move {
            let (code, _, _) = newcomer
                .run_with(
                    &["login", "--user", "7", "--password-stdin"],
                    &[],
                    "seven pass phrase\n",
                )
                .await;
            (code == 0).then_some(())
        }
    })
    .await;
    let good = std::fs::read_to_string(&accounts).unwrap();
    std::fs::write(&accounts, "users: [not, a, map]\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, _, err) = newcomer
        .run_with(
            &["login", "--user", "7", "--password-stdin"],
            &[],
            "seven pass phrase\n",
        )
        .await;
    assert_eq!(code, 0, "the last good accounts stay: {err}");
    std::fs::write(&accounts, good).unwrap();
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
            // Events of different streams arrive in any order: wait for all three.
            let seen = v["history"].as_array().map_or(0, Vec::len);
            (code == 0 && v["stage"] == "STAGE_DELIVERY_REQUESTED" && seen >= 3).then_some(v)
        }
    })
    .await;
    assert!(status["history"].as_array().unwrap().len() >= 3, "{status}");

    let list = manager
        .json(&["deliveries", "--date", &date, "--state", "requested"])
        .await;
    let delivery = list["deliveries"][0]["id"].as_i64().unwrap().to_string();
    let (code, _, err) = ctl.run(&["ship", &delivery]).await;
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");
    let (code, out, _) = manager.run(&["ship", &delivery]).await;
    assert_eq!(code, 0);
    assert!(out.contains("SHIPPED"), "{out}");

    let (code, out, _) = ctl.run(&["capacity", &date]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("DATE") && out.contains(&date), "{out}");
    let set = admin.json(&["capacity", &date, "--set", "7"]).await;
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
        .arg("--token-file")
        .arg(&ctl.token_file)
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
    let (code, _, err) = admin
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
