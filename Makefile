# parking-mesh: `make run` starts everything locally, `make test` runs the whole suite.
.PHONY: run run-prod test build fmt lint bench

run:
	bash scripts/run.sh

# The prod overlay's topology on this machine: PostgreSQL, a 3-node NATS JetStream cluster,
# two replicas of every service and of the gateway (docs/production.md).
run-prod:
	bash scripts/run-prod.sh

test:
	bash scripts/test.sh

build:
	cargo build --workspace --bins

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo bench -p mesh --bench overhead
	# Where the mesh's time goes, layer by layer (latency, wake-ups per call).
	cargo bench -p mesh --bench layers
	# The mesh beside a real Envoy sidecar (pinned by scripts/tools.sh) in the same run.
	cargo bench -p parking-e2e --bench sidecar
	# The gateway bench starts the release binaries of every service (NATS must be up).
	. scripts/lib.sh && ensure_nats && cargo build --release --bins && cargo bench -p parking-e2e --bench gateway --bench tracing
	# The pipeline bench: open-loop steps through the gateway on SQLite and PostgreSQL, the
	# view lag and backlog, a REST closed loop (6-12 min); writes bench/results/pipeline-<date>.md and pipeline.png.
	. scripts/lib.sh && ensure_nats && ensure_postgres && cargo bench -p parking-e2e --bench pipeline
