package api

import (
	"net/http"

	"github.com/roster-dev/roster/registry"
)

func (s *server) listLicenses(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "tenant")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	all, err := s.reg.Licenses(r.Context(), p, q.Get("tenant"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if all == nil {
		all = []registry.License{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"licenses": all})
}

func (s *server) getLicense(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	l, err := s.reg.License(r.Context(), p, r.PathValue("tenant"), r.PathValue("module"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *server) putLicense(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var spec struct {
		Seats *int `json:"seats"`
	}
	if !s.decode(w, r, &spec, false) {
		return
	}
	if spec.Seats == nil {
		s.fail(w, r, &registry.FieldError{Field: "seats", Problem: "is required: the number of sessions of the module that may be open at once"})
		return
	}
	l, err := s.reg.SetLicense(r.Context(), p, r.PathValue("tenant"), r.PathValue("module"), registry.LicenseSpec{Seats: *spec.Seats})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *server) deleteLicense(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	tenant, module := r.PathValue("tenant"), r.PathValue("module")
	if err := s.reg.DeleteLicense(r.Context(), p, tenant, module); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tenant": tenant, "module": module, "deleted": true})
}
