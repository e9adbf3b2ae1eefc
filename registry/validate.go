package registry

import (
	"fmt"
	"regexp"
	"unicode"
	"unicode/utf8"
)

// Limits on request fields.
const (
	MaxNameBytes       = 128  // tenant, user, module, pool, token and label-free names
	MaxTextBytes       = 128  // host, os
	MaxLabels          = 16   // labels per session
	MaxLabelKeyBytes   = 63   // a label key
	MaxLabelValueBytes = 256  // a label value
	MaxReasonBytes     = 1024 // a kill reason
	DefaultTenant      = "default"
)

var (
	idPattern       = regexp.MustCompile(`^[0-9a-f]{32}$`)
	labelKeyPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// checkName enforces the rule for names that become parts of etcd keys:
// 1..128 bytes of valid UTF-8, no "/", no control or invisible characters.
func checkName(field, v string) error {
	if v == "" {
		return invalid(field, "is required and must not be empty")
	}
	if len(v) > MaxNameBytes {
		return invalid(field, "is %d bytes long; at most %d bytes are allowed", len(v), MaxNameBytes)
	}
	if v == "." || v == ".." {
		return invalid(field, "must not be %q", v)
	}
	return checkText(field, v, true)
}

// checkText enforces valid UTF-8 without control characters (and, for
// names, without "/").
func checkText(field, v string, name bool) error {
	if !utf8.ValidString(v) {
		return invalid(field, "is not valid UTF-8")
	}
	for i, r := range v {
		switch {
		case name && r == '/':
			return invalid(field, "must not contain '/' (found at byte %d)", i)
		case unicode.IsControl(r) || r == utf8.RuneError || unicode.Is(unicode.Cf, r):
			return invalid(field, "must not contain control or invisible characters (found %U at byte %d)", r, i)
		}
	}
	return nil
}

func checkOptionalText(field, v string, max int) error {
	if len(v) > max {
		return invalid(field, "is %d bytes long; at most %d bytes are allowed", len(v), max)
	}
	return checkText(field, v, false)
}

// CheckSessionID validates the form of a session id.
func CheckSessionID(id string) error {
	if !idPattern.MatchString(id) {
		return invalid("id", "%q is not a session id (32 lowercase hex characters)", truncate(id, 40))
	}
	return nil
}

func checkLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return invalid("labels", "has %d entries; at most %d are allowed", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if len(k) == 0 || len(k) > MaxLabelKeyBytes || !labelKeyPattern.MatchString(k) {
			return invalid("labels", "key %q must be 1-%d characters of A-Z a-z 0-9 _ . -", truncate(k, 80), MaxLabelKeyBytes)
		}
		if err := checkOptionalText(fmt.Sprintf("labels[%s]", k), v, MaxLabelValueBytes); err != nil {
			return err
		}
	}
	return nil
}

func checkKind(k ClientKind) error {
	switch k {
	case KindUI, KindBackground, KindAppServer:
		return nil
	}
	return invalid("client_kind", "%q is not a client kind; use ui, background or appserver", truncate(string(k), 40))
}

// CheckRole validates an API token role.
func CheckRole(r Role) error {
	switch r {
	case RoleClient, RoleOperator, RoleAdmin:
		return nil
	}
	return invalid("role", "%q is not a role; use client, operator or admin", truncate(string(r), 40))
}

func checkRights(rights []Right) error {
	for _, r := range rights {
		switch r {
		case RightMultiLogin, RightInterruptSessions:
		default:
			return invalid("rights", "%q is not a right; known rights are %s and %s", truncate(string(r), 40), RightMultiLogin, RightInterruptSessions)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
