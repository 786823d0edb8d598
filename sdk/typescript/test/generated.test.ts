// The committed generated code and the package's version must be what `npm run generate`
// makes from proto/ now: a contract change without regeneration fails here.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { CONTRACT_VERSION } from "../src/index.js";

const sdk = resolve(dirname(fileURLToPath(import.meta.url)), "../.."); // from build-test/test
const contractVersion = readFileSync(resolve(sdk, "../../proto/VERSION"), "utf8").trim();

function files(root: string): Map<string, string> {
  const found = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else found.set(relative(root, path), readFileSync(path, "utf8"));
    }
  };
  walk(root);
  return found;
}

test("src/gen and src/version.ts are what npm run generate makes from proto/", () => {
  const out = mkdtempSync(join(tmpdir(), "parking-sdk-gen-"));
  try {
    execFileSync(process.execPath, [join(sdk, "scripts/generate.mjs"), "--out", out], { cwd: sdk, stdio: "pipe" });
    // Keys relative to src/: "gen/parking/v1/reservation_pb.ts", "version.ts".
    const fresh = files(join(out, "src"));
    const committed = new Map([...files(join(sdk, "src/gen"))].map(([name, text]) => [join("gen", name), text]));
    committed.set("version.ts", readFileSync(join(sdk, "src/version.ts"), "utf8"));
    const regenerate = "stale: run `npm run generate` in sdk/typescript and commit the result";
    assert.deepEqual([...committed.keys()].sort(), [...fresh.keys()].sort(), `files differ; ${regenerate}`);
    for (const [name, text] of fresh) {
      assert.equal(committed.get(name), text, `src/${name} is ${regenerate}`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("the package carries the contract's version", () => {
  const pkg = JSON.parse(readFileSync(join(sdk, "package.json"), "utf8")) as { version: string };
  const lock = JSON.parse(readFileSync(join(sdk, "package-lock.json"), "utf8")) as { version: string };
  assert.equal(pkg.version, contractVersion, "package.json: run `npm run generate`");
  assert.equal(lock.version, contractVersion, "package-lock.json: run `npm run generate`");
  assert.equal(CONTRACT_VERSION, contractVersion);
});
