package kube

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hoststack/hoststack/engine/session"
)

// CountingRules wraps the engine's rule seam and counts lookups and denies
// per app namespace (the engine itself does not count rule verdicts).
// Counters of an app namespace are dropped by Forget when it is no longer
// served. Safe for concurrent use: the engine calls Lookup from its
// goroutines.
type CountingRules struct {
	Next session.Rules

	mu     sync.RWMutex
	counts map[string]*ruleCounts
}

type ruleCounts struct{ lookups, denies atomic.Uint64 }

// Lookup implements session.Rules.
func (c *CountingRules) Lookup(q session.RuleQuery) session.Verdict {
	v := c.Next.Lookup(q)
	if q.Dir == session.Accept {
		// The listener's side of a session already judged at connect:
		// not a lookup of its own (apply.RuleLookup allows it outright).
		return v
	}
	rc := c.counter(q.Namespace)
	rc.lookups.Add(1)
	if v.Action == session.Deny {
		rc.denies.Add(1)
	}
	return v
}

func (c *CountingRules) counter(key string) *ruleCounts {
	c.mu.RLock()
	rc := c.counts[key]
	c.mu.RUnlock()
	if rc != nil {
		return rc
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]*ruleCounts{}
	}
	if rc = c.counts[key]; rc == nil {
		rc = &ruleCounts{}
		c.counts[key] = rc
	}
	return rc
}

// Counts returns the lookups and denies counted for an app namespace key.
func (c *CountingRules) Counts(key string) (lookups, denies uint64) {
	c.mu.RLock()
	rc := c.counts[key]
	c.mu.RUnlock()
	if rc == nil {
		return 0, 0
	}
	return rc.lookups.Load(), rc.denies.Load()
}

// Retain drops the counters of every key not in keep.
func (c *CountingRules) Retain(keep map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.counts {
		if !keep[k] {
			delete(c.counts, k)
		}
	}
}

// Metric names the agent exports, labelled app_namespace: the
// AppNamespace's "namespace/name", as everywhere else. Not "namespace":
// Prometheus sets that label to the scraped pod's namespace.
const (
	MetricApps         = "hoststack_agent_apps"
	MetricSessions     = "hoststack_agent_sessions"
	MetricSegmentBytes = "hoststack_agent_segment_bytes"
	MetricResident     = "hoststack_agent_segment_resident_bytes"
	MetricBytes        = "hoststack_agent_bytes_total"
	MetricRuleLookups  = "hoststack_agent_rule_lookups_total"
	MetricRuleDenies   = "hoststack_agent_rule_denies_total"
	MetricRefused      = "hoststack_agent_connects_refused_total"
	MetricRings        = "hoststack_agent_transport_rings_total"
	MetricKicks        = "hoststack_agent_transport_kicks_total"
	MetricServed       = "hoststack_agent_app_namespaces"
)

// LabelAppNamespace labels every per-AppNamespace series.
const LabelAppNamespace = "app_namespace"

// Collector exports the engine's per-AppNamespace statistics. It reads the
// engine at scrape time, so a series exists exactly as long as the engine
// serves its app namespace: nothing outlives the AppNamespace it describes.
type Collector struct {
	Stats func() []session.NamespaceStats
	Rules *CountingRules

	apps, sessions, segBytes, resident, bytes, lookups, denies, refused, rings, kicks, served *prometheus.Desc
}

// NewCollector returns a Collector reading stats (engine.Stats) and rules.
func NewCollector(stats func() []session.NamespaceStats, rules *CountingRules) *Collector {
	l := []string{LabelAppNamespace}
	return &Collector{
		Stats: stats, Rules: rules,
		apps:     prometheus.NewDesc(MetricApps, "Apps attached to the AppNamespace on this node.", l, nil),
		sessions: prometheus.NewDesc(MetricSessions, "Session ends held by the AppNamespace's apps on this node.", l, nil),
		segBytes: prometheus.NewDesc(MetricSegmentBytes, "Address space of the FIFO segments mapped for the AppNamespace's apps (sparse).", l, nil),
		resident: prometheus.NewDesc(MetricResident, "Memory behind the AppNamespace's FIFO segments: pages written and not yet given back.", l, nil),
		bytes:    prometheus.NewDesc(MetricBytes, "Bytes moved through the AppNamespace's cut-through sessions.", l, nil),
		lookups:  prometheus.NewDesc(MetricRuleLookups, "SessionRule lookups made for the AppNamespace's sessions.", l, nil),
		denies:   prometheus.NewDesc(MetricRuleDenies, "Sessions of the AppNamespace denied by a SessionRule.", l, nil),
		refused:  prometheus.NewDesc(MetricRefused, "Connects of the AppNamespace's apps the engine refused.", l, nil),
		rings:    prometheus.NewDesc(MetricRings, "Rings of the transport doorbells of the AppNamespace's apps (progress on sessions that leave the node).", l, nil),
		kicks:    prometheus.NewDesc(MetricKicks, "Transport sessions the engine looked at after those rings: about one per ring, every transport session of the app per ring for apps older than wire version 5.", l, nil),
		served:   prometheus.NewDesc(MetricServed, "AppNamespaces the engine serves on this node.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.apps, c.sessions, c.segBytes, c.resident, c.bytes, c.lookups, c.denies, c.refused, c.rings, c.kicks, c.served} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	stats := c.Stats()
	ch <- prometheus.MustNewConstMetric(c.served, prometheus.GaugeValue, float64(len(stats)))
	for _, s := range stats {
		key := s.Namespace
		ch <- prometheus.MustNewConstMetric(c.apps, prometheus.GaugeValue, float64(s.Apps), key)
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(s.Sessions), key)
		ch <- prometheus.MustNewConstMetric(c.segBytes, prometheus.GaugeValue, float64(s.SegmentBytes), key)
		ch <- prometheus.MustNewConstMetric(c.resident, prometheus.GaugeValue, float64(s.SegmentResident), key)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.Bytes), key)
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(s.ConnectsRefused), key)
		ch <- prometheus.MustNewConstMetric(c.rings, prometheus.CounterValue, float64(s.TransportRings), key)
		ch <- prometheus.MustNewConstMetric(c.kicks, prometheus.CounterValue, float64(s.TransportKicks), key)
		if c.Rules != nil {
			l, d := c.Rules.Counts(s.Namespace)
			ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(l), key)
			ch <- prometheus.MustNewConstMetric(c.denies, prometheus.CounterValue, float64(d), key)
		}
	}
}
