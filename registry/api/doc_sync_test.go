package api

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/roster-dev/roster/registry"
)

// TestDocsInSync holds docs/api.md and the served API together: every
// endpoint the API serves is documented, every documented endpoint is
// served, and every error code the API answers is in the error table.
func TestDocsInSync(t *testing.T) {
	doc, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := regexp.MustCompile("`(GET|POST|PUT|DELETE|PATCH) (/[^`?\\s]*)")
	var documented []string
	for _, m := range endpoint.FindAllStringSubmatch(string(doc), -1) {
		p := m[1] + " " + m[2]
		if !slices.Contains(documented, p) {
			documented = append(documented, p)
		}
	}
	served := Routes()
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("the API serves %q but docs/api.md does not document it", r)
		}
	}
	for _, d := range documented {
		if !slices.Contains(served, d) {
			t.Errorf("docs/api.md documents %q but the API does not serve it", d)
		}
	}
	codes := []string{"invalid_json", "body_too_large", "internal", "killed", "expired", "closed", "shutdown", "idle", "cleanup"}
	for _, c := range registry.Codes() {
		if _, ok := statusOf[c]; !ok {
			t.Errorf("error code %q has no HTTP status in statusOf", c)
		}
		codes = append(codes, c)
	}
	for _, c := range codes {
		if !strings.Contains(string(doc), "`"+c+"`") {
			t.Errorf("error code %q is not in docs/api.md", c)
		}
	}
}
