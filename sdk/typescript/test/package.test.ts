// What a user installs is dist/ through package.json's "exports": import it by name.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as source from "../src/index.js";

// A variable, so that tsc does not resolve it (dist/ may not be built when it type-checks).
const packageName: string = "@parking-mesh/sdk";

test("the built package exports what src/index.ts does", async () => {
  const built = (await import(packageName)) as Record<string, unknown>;
  assert.deepEqual(Object.keys(built).sort(), Object.keys(source).sort());
  assert.equal(built["CONTRACT_VERSION"], source.CONTRACT_VERSION);
  assert.equal(typeof built["createParkingClients"], "function");
  const http = (await import(`${packageName}/gen/google/api/http_pb`)) as Record<string, unknown>;
  assert.ok("HttpRuleSchema" in http);
});
