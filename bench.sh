#!/usr/bin/env bash
# Runs the session benchmarks RUNS times (default 5), interleaving Roster
# and raw etcd in every run, and summarizes them with benchstat (medians).
# Output: bench.txt (raw) and the benchstat table on stdout.
set -euo pipefail
cd "$(dirname "$0")"
runs=${RUNS:-5}
n=${BENCHTIME:-5000x}
: > bench.txt
for i in $(seq "$runs"); do
  echo "run $i/$runs" >&2
  go test -run '^$' -bench . -skip BatchHeartbeat -benchtime "$n" -count 1 ./registry/ ./registry/api/ | grep -E '^(Benchmark|goos|goarch|pkg|cpu)' >> bench.txt
  # A batch op renews 10,000 sessions (about 0.1 s): timed, not counted.
  go test -run '^$' -bench BatchHeartbeat -benchtime 3s -count 1 ./registry/ ./registry/api/ | grep -E '^(Benchmark|goos|goarch|pkg|cpu)' >> bench.txt
done
if ! command -v benchstat >/dev/null; then
  go install golang.org/x/perf/cmd/benchstat@latest
  export PATH="$PATH:$(go env GOPATH)/bin"
fi
benchstat bench.txt
