package client_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

func ExampleOpen() {
	node, err := sharedNode() // a real node, as at http://127.0.0.1:7400
	if err != nil {
		fmt.Println(err)
		return
	}

	ctx := context.Background()
	cfg := client.Config{Endpoints: []string{node.URL}, Token: node.AdminToken}
	req := registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-17", TTLSeconds: 60}

	s, err := client.Open(ctx, cfg, req)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s is logged in to %s, ttl %ds\n", s.Info().User, s.Info().Module, s.Info().TTLSeconds)

	// The single-login rule refuses a second login to the same module.
	_, err = client.Open(ctx, cfg, req)
	fmt.Println("second login refused:", errors.Is(err, client.ErrAlreadyLoggedIn))

	if err := s.Close(ctx); err != nil {
		fmt.Println(err)
	}
	fmt.Println("logged out:", errors.Is(s.Err(), client.ErrClosed))
	// Output:
	// alice is logged in to sales, ttl 60s
	// second login refused: true
	// logged out: true
}
