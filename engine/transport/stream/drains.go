package stream

import "time"

// Draining is a session of an event loop that its app closed: what the app
// wrote still drains to the peer, until a deadline.
type Draining interface {
	// Ended reports that the session ended by itself meanwhile.
	Ended() bool
	// Expire ends it: its deadline passed (the peer gets a reset).
	Expire()
}

// Drains are an event loop's draining sessions with their deadlines (the
// transport's close timeout); used by the loop alone.
type Drains struct{ list []draining }

type draining struct {
	s  Draining
	by time.Time
}

// Add has s drain until by.
func (d *Drains) Add(s Draining, by time.Time) { d.list = append(d.list, draining{s, by}) }

// Next is the earliest deadline, zero when none drains.
func (d *Drains) Next() time.Time {
	var next time.Time
	for _, x := range d.list {
		if next.IsZero() || x.by.Before(next) {
			next = x.by
		}
	}
	return next
}

// Expire ends the sessions whose deadline passed by now and forgets those
// that ended.
func (d *Drains) Expire(now time.Time) {
	kept := d.list[:0]
	for _, x := range d.list {
		switch {
		case x.s.Ended():
		case now.After(x.by):
			x.s.Expire()
		default:
			kept = append(kept, x)
		}
	}
	clear(d.list[len(kept):])
	d.list = kept
}

// Len is how many sessions drain.
func (d *Drains) Len() int { return len(d.list) }
