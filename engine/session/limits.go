package session

import (
	"fmt"
	"os"
	"time"
)

// Names of the node-wide limits, as errors and LimitStatus name them (the
// agent's flags are --node-max-apps, --node-max-workers and
// --node-max-engine-threads).
const (
	LimitNodeMaxApps    = "nodeMaxApps"
	LimitNodeMaxWorkers = "nodeMaxWorkers"
	LimitNodeMaxThreads = "nodeMaxThreads"
)

// quotaError is a refusal because a limit was reached; its text names the
// limit.
type quotaError struct{ msg string }

func (e *quotaError) Error() string { return e.msg }

// reserveApp takes one of the node's app slots; release with releaseApp.
func (e *Engine) reserveApp() error {
	max := int64(e.cfg.Limits.MaxApps)
	for {
		n := e.nApps.Load()
		if n >= max {
			return e.refuse(LimitNodeMaxApps, fmt.Sprintf("node limit %s (%d) reached: the session engine of this node serves %d apps", LimitNodeMaxApps, max, n))
		}
		if e.nApps.CompareAndSwap(n, n+1) {
			return nil
		}
	}
}

func (e *Engine) releaseApp() { e.nApps.Add(-1) }

// reserveWorker takes one of the node's worker slots, checking the thread
// cap too (workers share the engine's shards, but the cap guards the
// process against whatever else grows its threads).
func (e *Engine) reserveWorker() error {
	max := int64(e.cfg.Limits.MaxWorkers)
	for {
		n := e.nWorkers.Load()
		if n >= max {
			return e.refuse(LimitNodeMaxWorkers, fmt.Sprintf("node limit %s (%d) reached: the session engine of this node runs %d app workers", LimitNodeMaxWorkers, max, n))
		}
		if e.nWorkers.CompareAndSwap(n, n+1) {
			break
		}
	}
	if t := threadCount(); t >= 0 && t+1 > e.cfg.Limits.MaxThreads {
		e.nWorkers.Add(-1)
		return e.refuse(LimitNodeMaxThreads, fmt.Sprintf("node limit %s (%d) reached: the session engine has %d OS threads", LimitNodeMaxThreads, e.cfg.Limits.MaxThreads, t))
	}
	return nil
}

func (e *Engine) releaseWorker() { e.nWorkers.Add(-1) }

func (e *Engine) refuse(limit, msg string) error {
	e.limitMu.Lock()
	e.refusals[limit]++
	e.lastRefusal = msg
	e.limitMu.Unlock()
	return &quotaError{msg}
}

// threadCount is the number of OS threads of this process, -1 when
// /proc cannot tell.
func threadCount() int {
	f, err := os.Open("/proc/self/task")
	if err != nil {
		return -1
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return -1
	}
	return len(names)
}

// LimitStatus is the engine's usage of its node-wide limits.
type LimitStatus struct {
	Apps, MaxApps       int
	Workers, MaxWorkers int
	Threads, MaxThreads int
	// Refusals counts, per limit name (LimitNodeMax*), what was refused
	// since the engine started; LastRefusal is the latest refusal's text.
	Refusals    map[string]uint64
	LastRefusal string
}

// Reached names the limits that are in use to their cap now, in a fixed
// order.
func (s LimitStatus) Reached() []string {
	var out []string
	if s.Apps >= s.MaxApps {
		out = append(out, LimitNodeMaxApps)
	}
	if s.Workers >= s.MaxWorkers {
		out = append(out, LimitNodeMaxWorkers)
	}
	if s.Threads >= s.MaxThreads {
		out = append(out, LimitNodeMaxThreads)
	}
	return out
}

// Limits reports the usage of the node-wide limits.
func (e *Engine) Limits() LimitStatus {
	l := e.cfg.Limits
	st := LimitStatus{
		Apps: int(e.nApps.Load()), MaxApps: l.MaxApps,
		Workers: int(e.nWorkers.Load()), MaxWorkers: l.MaxWorkers,
		Threads: threadCount(), MaxThreads: l.MaxThreads,
		Refusals: map[string]uint64{},
	}
	e.limitMu.Lock()
	for k, v := range e.refusals {
		st.Refusals[k] = v
	}
	st.LastRefusal = e.lastRefusal
	e.limitMu.Unlock()
	return st
}

// attachTimeout is how long a connection may take to send Attach.
func (e *Engine) attachTimeout() time.Duration { return e.cfg.Limits.AttachTimeout }
