package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// Defaults used by DefaultConfig.
const (
	DefaultClientListen        = "127.0.0.1:7401"
	DefaultPeerListen          = "127.0.0.1:7402"
	DefaultQuotaBytes          = 4 << 30 // etcd's own default is 2 GiB
	DefaultCompactionRetention = time.Hour
	DefaultStartTimeout        = 60 * time.Second
)

// Config configures the embedded etcd member. Start from DefaultConfig and set Name and
// DataDir: Validate does not fill in zero values, so a field left at zero is an error.
type Config struct {
	// Name is the etcd member name, e.g. "n1". Required. Letters, digits, '-', '_' and '.'.
	Name string
	// DataDir is the directory for etcd's data, e.g. <roster-data>/etcd. Required. etcd
	// creates it (mode 0700) if it does not exist; if it holds a member, Start restarts it.
	DataDir string
	// ClientListen is the host:port etcd serves clients on, default "127.0.0.1:7401". The
	// host must be an IP address or "localhost" and is also the advertised address, so it
	// cannot be unspecified (0.0.0.0 or ::).
	ClientListen string
	// PeerListen is the host:port etcd serves peers on, default "127.0.0.1:7402". Same
	// rules as ClientListen.
	PeerListen string
	// QuotaBytes is the backend size quota; past it etcd raises a NOSPACE alarm and accepts
	// only reads and deletes. Default 4 GiB.
	QuotaBytes int64
	// CompactionRetention is the history etcd keeps under periodic auto-compaction, default
	// 1h: etcd compacts every CompactionRetention (at most hourly) to the revision of
	// CompactionRetention ago. etcd does not compact by default; Roster always does. Until
	// a compaction, every deleted key stays in etcd's in-memory index, and every range read
	// over its prefix (a page of a listing, its count) steps over it; but each compaction
	// reads the whole database in batches that hold up writes meanwhile, so a short
	// retention costs a loaded cluster (docs/performance.md, "Deleted keys in etcd's
	// index"). Watch progress notifications come every fifth of it (at most every 10
	// minutes), so a quiet event stream can resume within it.
	CompactionRetention time.Duration
	// StartTimeout bounds how long Start waits for the member to become ready, default 60s.
	StartTimeout time.Duration
	// InitialCluster is etcd's initial cluster, "name=peerURL,…", used only when DataDir
	// holds no member yet. Empty means a new single-member cluster of this member alone.
	InitialCluster string
	// JoinExisting starts a member that was added to a running cluster (etcd's
	// initial-cluster-state=existing) instead of bootstrapping a new cluster. It needs
	// InitialCluster naming every member, this one included.
	JoinExisting bool
	// EtcdLogger receives etcd's own logs, server and client; nil discards them. etcd still
	// exits the process on its fatal log lines whatever the logger.
	EtcdLogger *zap.Logger
	// Logger receives this package's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every default set; the caller still sets Name and
// DataDir.
func DefaultConfig() Config {
	return Config{
		ClientListen:        DefaultClientListen,
		PeerListen:          DefaultPeerListen,
		QuotaBytes:          DefaultQuotaBytes,
		CompactionRetention: DefaultCompactionRetention,
		StartTimeout:        DefaultStartTimeout,
	}
}

// Validate reports the first problem with c, naming the field. It changes nothing.
func (c *Config) Validate() error {
	if err := validateName(c.Name); err != nil {
		return fmt.Errorf("cluster: name %q: %w", c.Name, err)
	}
	if c.DataDir == "" {
		return errors.New("cluster: data dir is empty")
	}
	if err := validateListen(c.ClientListen); err != nil {
		return fmt.Errorf("cluster: client listen %q: %w", c.ClientListen, err)
	}
	if err := validateListen(c.PeerListen); err != nil {
		return fmt.Errorf("cluster: peer listen %q: %w", c.PeerListen, err)
	}
	if c.ClientListen == c.PeerListen {
		return fmt.Errorf("cluster: client listen and peer listen are both %q", c.ClientListen)
	}
	if c.QuotaBytes <= 0 {
		return fmt.Errorf("cluster: quota bytes %d: must be positive", c.QuotaBytes)
	}
	if c.CompactionRetention <= 0 {
		return fmt.Errorf("cluster: compaction retention %s: must be positive", c.CompactionRetention)
	}
	if c.StartTimeout <= 0 {
		return fmt.Errorf("cluster: start timeout %s: must be positive", c.StartTimeout)
	}
	if c.JoinExisting && c.InitialCluster == "" {
		return errors.New("cluster: joining an existing cluster needs the initial cluster of every member")
	}
	return nil
}

// validateName accepts names that are safe inside etcd's "name=url,name=url" initial
// cluster string and readable in logs.
func validateName(name string) error {
	if name == "" {
		return errors.New("must not be empty")
	}
	for _, r := range name {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '-', r == '_', r == '.':
		default:
			return fmt.Errorf("character %q not allowed: use letters, digits, '-', '_' and '.'", r)
		}
	}
	return nil
}

// validateListen accepts host:port where host is an IP address or "localhost" (what etcd
// can bind) and not unspecified (the address is also advertised) and port is 1-65535.
func validateListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("must be host:port: %w", err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("port %q must be a number from 1 to 65535", port)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("host %q must be an IP address or localhost", host)
	}
	if ip.IsUnspecified() {
		return fmt.Errorf("host %s is unspecified: name the address to listen on and advertise", host)
	}
	return nil
}
