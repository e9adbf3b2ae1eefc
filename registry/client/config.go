package client

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// DefaultEndpoint is the address a node listens on unless told otherwise.
const DefaultEndpoint = "http://127.0.0.1:7400"

// Config configures a Client.
type Config struct {
	// Endpoints are the base URLs of the nodes, e.g. "http://10.0.0.1:7400".
	// Any node serves the whole API; the client starts with the first and
	// moves to the next when one cannot be reached or answers 503. A base URL
	// may carry a path prefix (a node behind a reverse proxy) but no query.
	Endpoints []string
	// Token is the bearer token sent with every call except the health
	// checks: an API token ("rt1.…") or a session token ("rs1.…"). Empty
	// sends no Authorization header.
	Token string
	// HTTPClient sends the requests. Nil means a client whose connections
	// time out after 5 s and whose requests time out after 30 s, so that a
	// node that swallows packets does not stall failover.
	HTTPClient *http.Client
	// Logger receives debug lines about failover and failed heartbeats; the
	// errors themselves reach the caller (see WithHeartbeatHook). Nil
	// discards them.
	Logger *slog.Logger
}

// DefaultConfig returns a Config for one node on this machine
// (DefaultEndpoint), with no token.
func DefaultConfig() Config {
	return Config{Endpoints: []string{DefaultEndpoint}}
}

// Validate reports the first problem with cfg: no endpoints, or an endpoint
// that is not an absolute http or https URL.
func (cfg Config) Validate() error {
	if len(cfg.Endpoints) == 0 {
		return errors.New("client: no endpoints: give at least one node URL such as " + DefaultEndpoint)
	}
	for _, ep := range cfg.Endpoints {
		if _, err := parseEndpoint(ep); err != nil {
			return err
		}
	}
	return nil
}

// parseEndpoint checks one endpoint and returns it without a trailing slash,
// ready to have an API path appended.
func parseEndpoint(ep string) (string, error) {
	if strings.TrimSpace(ep) == "" {
		return "", errors.New("client: empty endpoint: give a node URL such as " + DefaultEndpoint)
	}
	if !strings.Contains(ep, "://") {
		return "", fmt.Errorf("client: endpoint %q has no scheme: write http://%s or https://%s", ep, ep, ep)
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", fmt.Errorf("client: endpoint %q is not a URL: %w", ep, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("client: endpoint %q: scheme must be http or https, as in %s", ep, DefaultEndpoint)
	}
	if u.Host == "" {
		return "", fmt.Errorf("client: endpoint %q has no host, as in %s", ep, DefaultEndpoint)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("client: endpoint %q: only scheme, host, port and path are allowed", ep)
	}
	return strings.TrimRight(ep, "/"), nil
}
