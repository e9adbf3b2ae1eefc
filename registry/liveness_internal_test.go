package registry

import (
	"testing"
	"time"
)

// TestHoldOff: a backstop leaves a lapsed session to a duty leader that is ending
// others, but not forever: a session the leader has not ended lapseHoldOff after
// the backstop's turn is the backstop's, whatever else the leader ends, and still
// before the lease's slack runs out.
func TestHoldOff(t *testing.T) {
	const ttl, late = 10 * time.Second, LapseBackstop
	tests := []struct {
		name                string
		silent, late, since time.Duration
		want                bool
	}{
		{"the duty leader holds nothing off", ttl + 2*time.Second, 0, 0, false},
		{"the leader ended others just now", ttl + late, late, 100 * time.Millisecond, true},
		{"just before the bound", ttl + late + lapseHoldOff - time.Millisecond, late, 100 * time.Millisecond, true},
		{"the leader's ends stopped", ttl + late, late, late, false},
		{"the leader ends others, not this one", ttl + late + lapseHoldOff, late, 100 * time.Millisecond, false},
		{"long past the bound", ttl + time.Minute, late, 0, false},
	}
	for _, tt := range tests {
		if got := holdOff(tt.silent, ttl, tt.late, tt.since); got != tt.want {
			t.Errorf("%s: holdOff(silent %s, ttl %s, late %s, others ended %s ago) = %v, want %v",
				tt.name, tt.silent, ttl, tt.late, tt.since, got, tt.want)
		}
	}
	// The longest backstop delay (a quarter more than LapseBackstop), the bound and
	// the wait before a held-off session is checked again (half the delay) leave the
	// backstop's end before the lease, which outlives the TTL by LeaseSlack less a
	// second (see leaseOutlivesTTL).
	longest := LapseBackstop * 5 / 4
	if worst := longest + lapseHoldOff + longest/2; worst >= LeaseSlack-time.Second {
		t.Errorf("a held-off session is ended %s past its TTL, not before its lease runs out (%s past it)", worst, LeaseSlack-time.Second)
	}
}
