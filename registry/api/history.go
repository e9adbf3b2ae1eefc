package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/roster-dev/roster/registry"
)

func (s *server) history(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "tenant", "user", "module", "reason", "since", "until", "limit", "cursor")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f := registry.HistoryFilter{Tenant: q.Get("tenant"), User: q.Get("user"), Module: q.Get("module"),
		Reason: registry.EndReason(q.Get("reason")), Cursor: q.Get("cursor")}
	if f.Since, f.Until, f.Limit, err = logWindow(q); err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := s.reg.History(r.Context(), p, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *server) audit(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "action", "actor", "tenant", "user", "module", "session", "code", "since", "until", "limit", "cursor")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f := registry.AuditFilter{Action: registry.AuditAction(q.Get("action")), Actor: q.Get("actor"), Tenant: q.Get("tenant"),
		User: q.Get("user"), Module: q.Get("module"), Session: q.Get("session"), Code: q.Get("code"), Cursor: q.Get("cursor")}
	if f.Since, f.Until, f.Limit, err = logWindow(q); err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := s.reg.Audit(r.Context(), p, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// logWindow reads the since, until and limit parameters of a log's page.
func logWindow(q url.Values) (since, until time.Time, limit int, err error) {
	for _, t := range []struct {
		name string
		dst  *time.Time
	}{{"since", &since}, {"until", &until}} {
		v := q.Get(t.name)
		if v == "" {
			continue
		}
		if *t.dst, err = time.Parse(time.RFC3339, v); err != nil {
			return since, until, 0, &registry.FieldError{Field: t.name, Problem: fmt.Sprintf("%q is not an RFC 3339 time; give one such as 2026-11-21T10:00:00Z", v)}
		}
	}
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 {
			return since, until, 0, &registry.FieldError{Field: "limit", Problem: fmt.Sprintf("%q is not a number from 1 to %d", l, registry.MaxListLimit)}
		}
	}
	return since, until, limit, nil
}
