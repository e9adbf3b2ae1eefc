// Package api serves Roster's HTTP JSON API (docs/api.md) on top of a
// registry.Registry: it authenticates bearer tokens, decodes and bounds
// request bodies, and maps the registry's errors to one status and one
// stable code each.
//
//	reg, _ := registry.New(cfg)
//	srv := &http.Server{Handler: api.New(api.Config{Registry: reg, Node: "n1"})}
package api
