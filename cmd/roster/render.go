package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/registry"
)

// newTable returns a tabwriter for aligned columns separated by two spaces.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// renderSessions prints sessions as a table, one row each, header first.
func renderSessions(w io.Writer, sessions []registry.Session) {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tTENANT\tUSER\tMODULE\tHOST\tPOOL\tNODE\tSTARTED\tEXPIRES-IN")
	for _, s := range sessions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(s.ID), cell(s.Tenant), cell(s.User), cell(s.Module), cell(s.Host), cell(s.Pool), cell(s.Node),
			formatTime(s.StartedAt), formatSeconds(s.ExpiresInSeconds))
	}
	tw.Flush()
}

// renderSession prints one session as aligned "FIELD  value" lines; token
// is printed when not empty.
func renderSession(w io.Writer, s registry.Session, token string) {
	pid := "-"
	if s.PID > 0 {
		pid = strconv.FormatInt(s.PID, 10)
	}
	fields := [][2]string{
		{"ID", s.ID}, {"TENANT", s.Tenant}, {"USER", s.User}, {"MODULE", s.Module},
		{"HOST", s.Host}, {"PID", pid}, {"OS", s.OS}, {"KIND", string(s.ClientKind)},
		{"POOL", s.Pool}, {"SITE", s.Site}, {"NODE", s.Node},
		{"STARTED", formatTime(s.StartedAt)}, {"TTL", formatSeconds(s.TTLSeconds)},
		{"EXPIRES-IN", formatSeconds(s.ExpiresInSeconds)}, {"LABELS", formatLabels(s.Labels)},
		{"OPENED-BY", s.OpenedBy},
	}
	if len(s.Connections) > 0 {
		fields = append(fields, [2]string{"CONNECTIONS", formatConnRefs(s.Connections)})
	}
	if token != "" {
		fields = append(fields, [2]string{"TOKEN", token})
	}
	renderFields(w, fields)
}

// renderFields prints name/value pairs as two aligned columns.
func renderFields(w io.Writer, fields [][2]string) {
	tw := newTable(w)
	for _, f := range fields {
		fmt.Fprintf(tw, "%s\t%s\n", f[0], cell(f[1]))
	}
	tw.Flush()
}

func renderUsers(w io.Writer, users []registry.User) {
	tw := newTable(w)
	fmt.Fprintln(tw, "TENANT\tUSER\tRIGHTS\tSERVICES\tUPDATED")
	for _, u := range users {
		rights := make([]string, len(u.Rights))
		for i, r := range u.Rights {
			rights[i] = string(r)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cell(u.Tenant), cell(u.User), cell(strings.Join(rights, ",")),
			cell(strings.Join(u.Services, ",")), formatTime(u.UpdatedAt))
	}
	tw.Flush()
}

func renderTokens(w io.Writer, tokens []registry.TokenInfo) {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tROLE\tCREATED")
	for _, t := range tokens {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", cell(t.Name), cell(string(t.Role)), formatTime(t.CreatedAt))
	}
	tw.Flush()
}

// renderPools prints pools as a table, header first.
func renderPools(w io.Writer, pools []registry.Pool) {
	tw := newTable(w)
	fmt.Fprintln(tw, "POOL\tSTATE\tSESSIONS\tSINCE\tBY\tMESSAGE")
	for _, p := range pools {
		since := ""
		if p.Since != nil {
			since = formatTime(*p.Since)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", cell(p.Name), p.State, p.Sessions, cell(since), cell(p.By), cell(p.Message))
	}
	tw.Flush()
}

// renderShutdowns prints shutdown requests as a table, header first.
func renderShutdowns(w io.Writer, all []registry.Shutdown) {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tSCOPE\tTARGET\tSTATE\tDEADLINE\tIN-SCOPE\tOPEN\tTERMINATED\tBY\tMESSAGE")
	for _, s := range all {
		target := s.Pool
		switch s.Scope {
		case registry.ScopeSession:
			target = s.Session
		case registry.ScopeAll:
			target = s.Tenant
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", s.ID, s.Scope, cell(target), s.State,
			formatTime(s.Deadline), s.InScope, s.Open, s.Terminated, cell(s.RequestedBy), cell(s.Message))
	}
	tw.Flush()
}

// renderMembers prints the cluster's nodes as a table, one row each, header
// first.
func renderMembers(w io.Writer, members []cluster.MemberStatus) {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tSITE\tPOOL\tGOSSIP\tETCD\tLEADER\tHEALTHY\tAPI")
	for _, m := range members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(m.Name), cell(m.Site), cell(m.Pool), cell(m.Gossip), cell(m.EtcdRole),
			yesNo(m.Leader), yesNo(m.Healthy), cell(m.APIURL))
	}
	tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// formatBytes shows a size in bytes, KiB, MiB or GiB, with one decimal
// above bytes: 512 B, 1.5 KiB, 24.1 MiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB", "TiB"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return fmt.Sprintf("%.1f %s", v, suffix)
}

// cell shows an empty value as "-" so that columns stay countable, and
// replaces tabs and newlines, which would break the alignment.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

// formatTime shows a time in UTC as RFC 3339, as the API does.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// formatSeconds shows a number of seconds as a short duration: 45s, 2m,
// 1m30s, 1h5m.
func formatSeconds(n int64) string {
	s := (time.Duration(n) * time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// formatLabels shows labels as k=v pairs sorted by key.
func formatLabels(labels map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}
