package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry/client"
)

// defaultTokenFile is where a node started in the current directory with
// the default data directory writes its admin token.
const defaultTokenFile = "roster-data/admin.token"

// Environment variables read by the client commands.
const (
	envEndpoints = "ROSTER_ENDPOINTS"
	envToken     = "ROSTER_TOKEN"
	envTokenFile = "ROSTER_TOKEN_FILE"
)

// globalFlags are the flags every client command accepts.
type globalFlags struct {
	endpoints string
	token     string
	tokenFile string
	output    string
	fs        *pflag.FlagSet
}

// flagSet returns a flag set with the global flags, bound to g.
func (g *globalFlags) flagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&g.endpoints, "endpoints", "",
		"comma-separated node `URLS`, tried in order (env "+envEndpoints+"; default "+client.DefaultEndpoint+")")
	fs.StringVar(&g.token, "token", "", "API or session `TOKEN` (env "+envToken+")")
	fs.StringVar(&g.tokenFile, "token-file", "", "read the token from `FILE` (env "+envTokenFile+")")
	fs.StringVarP(&g.output, "output", "o", "table", "output `FORMAT`: table, or json for the API's JSON")
	g.fs = fs
	return fs
}

// check validates the global flags that need no I/O.
func (g *globalFlags) check(path string) error {
	switch g.output {
	case "table", "json":
	default:
		return usagef(path, "-o: unknown output format %q (want table or json)", g.output)
	}
	if g.fs.Changed("token") && g.fs.Changed("token-file") {
		return usagef(path, "--token and --token-file both given; use one")
	}
	if g.fs.Changed("token") && strings.TrimSpace(g.token) == "" {
		return usagef(path, "--token is empty")
	}
	return nil
}

func (g *globalFlags) json() bool { return g.output == "json" }

// endpointList returns the endpoints from --endpoints, $ROSTER_ENDPOINTS or
// the default, and the name of the source for error messages.
func (g *globalFlags) endpointList(getenv func(string) string) ([]string, string) {
	src, list := "--endpoints", g.endpoints
	if !g.fs.Changed("endpoints") {
		src, list = envEndpoints, getenv(envEndpoints)
		if list == "" {
			return []string{client.DefaultEndpoint}, "the default endpoint"
		}
	}
	var eps []string
	for ep := range strings.SplitSeq(list, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	return eps, src
}

// tokenSource says where the token came from; "" means none was found.
type tokenSource string

// resolveToken finds the token: --token, --token-file, $ROSTER_TOKEN,
// $ROSTER_TOKEN_FILE, then the fallback file if it exists.
func (g *globalFlags) resolveToken(e *cliEnv) (string, tokenSource, error) {
	switch {
	case g.fs.Changed("token"):
		return strings.TrimSpace(g.token), "--token", nil
	case g.fs.Changed("token-file"):
		return readTokenFile(g.tokenFile, "--token-file")
	case e.getenv(envToken) != "":
		return strings.TrimSpace(e.getenv(envToken)), envToken, nil
	case e.getenv(envTokenFile) != "":
		return readTokenFile(e.getenv(envTokenFile), envTokenFile)
	}
	if e.tokenFallback != "" {
		tok, src, err := readTokenFile(e.tokenFallback, tokenSource(e.tokenFallback))
		if errors.Is(err, fs.ErrNotExist) {
			return "", "", nil
		}
		return tok, src, err
	}
	return "", "", nil
}

func readTokenFile(path string, src tokenSource) (string, tokenSource, error) {
	if path == "" {
		return "", src, fmt.Errorf("%s: empty file name", src)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", src, fmt.Errorf("%s: %w", src, err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", src, fmt.Errorf("%s: %s holds no token", src, path)
	}
	return tok, src, nil
}

// newClient builds the API client from the global flags and the environment.
func (inv *invocation) newClient() (*client.Client, error) {
	eps, src := inv.g.endpointList(inv.getenv)
	cfg := client.Config{Endpoints: eps}
	if err := cfg.Validate(); err != nil {
		return nil, usagef(inv.cmd.path, "%s: %s", src, strings.TrimPrefix(err.Error(), "client: "))
	}
	if inv.sessionToken != "" {
		cfg.Token = inv.sessionToken
		return client.New(cfg)
	}
	tok, tsrc, err := inv.g.resolveToken(inv.cliEnv)
	if err != nil {
		return nil, err
	}
	cfg.Token = tok
	inv.noToken = tsrc == ""
	return client.New(cfg)
}

// apiClient returns the client built from the global flags, building it on
// first use.
func (inv *invocation) apiClient() (*client.Client, error) {
	if inv.c == nil {
		c, err := inv.newClient()
		if err != nil {
			return nil, err
		}
		inv.c = c
	}
	return inv.c, nil
}

// do sends one API call with the client built from the global flags and
// returns the answer's JSON unchanged.
func (inv *invocation) do(ctx context.Context, method, path string, query url.Values, body any) ([]byte, error) {
	c, err := inv.apiClient()
	if err != nil {
		return nil, err
	}
	data, err := c.Do(ctx, method, path, query, body)
	return data, inv.hint(err)
}

// hint adds advice to an error of a call: an unauthenticated answer to a
// call sent without a token says where a token can come from.
func (inv *invocation) hint(err error) error {
	if err != nil && inv.noToken && errors.Is(err, client.ErrUnauthenticated) {
		return &hintError{err: err, hint: "no token was given: use --token, --token-file, " + envToken + " or " + envTokenFile +
			", or run roster in the directory that holds roster-data/"}
	}
	return err
}

// hintError adds a line of advice to an error.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() + " (" + e.hint + ")" }
func (e *hintError) Unwrap() error { return e.err }

// describeError is how an error is shown after "roster: ": an API error as
// "<code>: <message>", anything else by its text, and a hint on its own line.
func describeError(err error) string {
	hint := ""
	if h, ok := errors.AsType[*hintError](err); ok {
		hint, err = h.hint, h.err
	}
	msg := strings.TrimPrefix(err.Error(), "client: ")
	if ended, ok := err.(*client.EndedError); ok {
		if ae, ok := errors.AsType[*client.APIError](ended); ok {
			msg = ae.Error()
		}
	}
	if hint != "" {
		msg += "\nroster: hint: " + hint
	}
	return msg
}

// decodeAnswer decodes an API answer for the table output.
func decodeAnswer(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("cannot read the answer: %w", err)
	}
	return nil
}

// printJSON writes an API answer exactly as it came, ending in a newline.
func (inv *invocation) printJSON(data []byte) {
	inv.stdout.Write(data)
	if len(data) == 0 || data[len(data)-1] != '\n' {
		fmt.Fprintln(inv.stdout)
	}
}

// show prints an API answer: with -o json exactly the API's JSON, else
// the answer decoded as T and printed by render. A failed call's error is
// passed through, so show can wrap inv.do directly.
func show[T any](inv *invocation, data []byte, err error, render func(T)) error {
	if err != nil {
		return err
	}
	if inv.g.json() {
		inv.printJSON(data)
		return nil
	}
	var v T
	if err := decodeAnswer(data, &v); err != nil {
		return err
	}
	render(v)
	return nil
}
