#!/usr/bin/env bash
# Regenerates the cluster figures of docs/performance.md: starts 3 real
# roster nodes on loopback, runs roster bench with the raw etcd baseline
# for every workload (3 interleaved rounds each), and rewrites the section
# between the cluster-figures markers. Takes about an hour on 2 cores
# (FIGURES_QUICK=1 checks the runner in minutes; its figures mean nothing;
# FIGURES_FROM=NAME resumes at the run of that name, e.g. "expiry, 10000",
# after one failed, and writes only the runs from there on; FIGURES_ONLY="open|kill-latency"
# runs and writes only the runs whose names start so; each workload runs on
# a fresh cluster, FIGURES_SHARED=1 runs them all on one). Run it on a quiet
# machine: every figure is a ratio to raw etcd in the same run, but the
# absolute numbers follow whatever else the cores do.
set -euo pipefail
cd "$(dirname "$0")"
go test -run '^$' -bench ClusterFigures -benchtime 1x -timeout 4h -v ./e2e/ -args -figures-doc "$PWD/docs/performance.md"
