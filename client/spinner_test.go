package client

import "testing"

// TestSpinner: the poll before a sleep backs off exponentially while it
// finds nothing (up to 63 waits without one) and comes back at once when
// a poll, or a sleep shorter than the poll would have been, pays.
func TestSpinner(t *testing.T) {
	// each step: what the wait does with its poll ('m' missed, 'p' paid)
	// if it polls, and whether it polls
	type step struct {
		outcome byte
		polls   bool
	}
	run := func(t *testing.T, steps []step) {
		t.Helper()
		var sp spinner
		for i, s := range steps {
			if got := sp.polls(); got != s.polls {
				t.Fatalf("wait %d: polls %v, want %v (state %+v)", i, got, s.polls, sp)
			}
			switch s.outcome {
			case 'm':
				sp.missed()
			case 'p':
				sp.paid()
			}
		}
	}
	t.Run("backs off", func(t *testing.T) {
		// miss → skip 1, miss → skip 3, miss → skip 7
		steps := []step{{'m', true}, {0, false}, {'m', true}}
		for range 3 {
			steps = append(steps, step{0, false})
		}
		steps = append(steps, step{'m', true})
		for range 7 {
			steps = append(steps, step{0, false})
		}
		steps = append(steps, step{0, true})
		run(t, steps)
	})
	t.Run("a paid poll resets", func(t *testing.T) {
		run(t, []step{{'m', true}, {0, false}, {'p', true}, {'m', true}, {0, false}, {0, true}})
	})
	t.Run("a short sleep resets", func(t *testing.T) {
		// while skipping, a wait whose sleep was shorter than the poll
		// pays: the next one polls
		run(t, []step{{'m', true}, {0, false}, {'m', true}, {'p', false}, {0, true}})
	})
	t.Run("capped", func(t *testing.T) {
		var sp spinner
		for range 100 {
			sp.missed()
		}
		if sp.misses != spinMissMax || sp.skip != 1<<spinMissMax-1 {
			t.Fatalf("after 100 misses: %+v", sp)
		}
	})
}
