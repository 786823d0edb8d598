// The test run's global setup: starts one local-cluster (the four services and the
// gateway, fresh namespace and SQLite files), hands its JSON line to the test files in
// PARKING_CLUSTER, runs them with node's test runner, then closes the cluster's stdin
// so that it stops and cleans up.
//   LOCAL_CLUSTER: the local-cluster binary (default <repo>/target/debug/local-cluster).
import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url)); // build-test/test
const repo = resolve(here, "../../../..");
const binary = process.env["LOCAL_CLUSTER"] ?? join(repo, "target/debug/local-cluster");
if (!existsSync(binary)) {
  console.error(`local-cluster not found at ${binary}: run cargo build --workspace --bins, or set LOCAL_CLUSTER`);
  process.exit(1);
}

const cluster = spawn(binary, [], { stdio: ["pipe", "pipe", "pipe"] });
let clusterLog = "";
cluster.stderr.on("data", (chunk: Buffer) => {
  clusterLog = (clusterLog + chunk.toString()).slice(-8000);
});
const exited = new Promise<number | null>((done) => cluster.on("exit", (code) => done(code)));

const ready = await new Promise<string>((done, fail) => {
  const timer = setTimeout(() => fail(new Error("local-cluster printed nothing within 90 s")), 90_000);
  createInterface({ input: cluster.stdout }).once("line", (line) => {
    clearTimeout(timer);
    done(line);
  });
  void exited.then((code) => fail(new Error(`local-cluster exited (${code}) before it was ready`)));
}).catch((error: unknown) => {
  console.error(String(error), "\n--- local-cluster stderr (tail) ---\n" + clusterLog);
  cluster.kill("SIGTERM");
  process.exit(1);
});

const stop = (): void => {
  cluster.stdin.end();
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

const files = readdirSync(here)
  .filter((name) => name.endsWith(".test.js"))
  .sort()
  .map((name) => join(here, name));
// A hung call fails its test instead of the run.
const tests = spawn(process.execPath, ["--test", "--test-timeout=60000", ...files], {
  stdio: "inherit",
  env: { ...process.env, PARKING_CLUSTER: ready },
});
const testsCode = await new Promise<number>((done) => tests.on("exit", (code) => done(code ?? 1)));

stop();
const clusterCode = await Promise.race([exited, new Promise<"timeout">((done) => setTimeout(() => done("timeout"), 30_000))]);
if (clusterCode === "timeout") {
  console.error("local-cluster did not stop within 30 s of its stdin closing; sending SIGTERM");
  cluster.kill("SIGTERM");
}
process.exit(testsCode);
