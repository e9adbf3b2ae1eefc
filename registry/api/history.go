package api

import (
	"fmt"
	"net/http"
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
	for _, t := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		v := q.Get(t.name)
		if v == "" {
			continue
		}
		if *t.dst, err = time.Parse(time.RFC3339, v); err != nil {
			s.fail(w, r, &registry.FieldError{Field: t.name, Problem: fmt.Sprintf("%q is not an RFC 3339 time; give one such as 2026-11-21T10:00:00Z", v)})
			return
		}
	}
	if l := q.Get("limit"); l != "" {
		if f.Limit, err = strconv.Atoi(l); err != nil || f.Limit < 1 {
			s.fail(w, r, &registry.FieldError{Field: "limit", Problem: fmt.Sprintf("%q is not a number from 1 to %d", l, registry.MaxListLimit)})
			return
		}
	}
	page, err := s.reg.History(r.Context(), p, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}
