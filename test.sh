#!/usr/bin/env bash
# Runs every test: go vet, all packages' tests, and the race detector on the
# packages that start goroutines around etcd and gossip (registry, its API,
# and cluster) and the liveness exchange.
set -euo pipefail
cd "$(dirname "$0")"
export CGO_ENABLED=1
go vet ./...
go test -count=1 -timeout 15m ./...
go test -count=1 -race -timeout 15m ./registry/... ./cluster/...
