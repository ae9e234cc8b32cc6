package kube

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/hoststack/hoststack/agent/render"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
)

func an(ns, name string, gen int64, nodeSel map[string]string) hsv1.AppNamespace {
	a := hsv1.AppNamespace{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: gen}}
	a.Spec.NodeSelector = nodeSel
	return a
}

func rule(ns, name, anKey string) rules.Rule {
	return rules.Rule{Namespace: anKey, Name: ns + "/" + name, Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("10.0.0.0/8")}
}

func TestBuildStatus(t *testing.T) {
	node := map[string]string{"zone": "a"}
	deleting := an("t", "gone", 1, nil)
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	ans := []hsv1.AppNamespace{
		an("t", "web", 3, map[string]string{"zone": "a"}),
		an("t", "other-zone", 1, map[string]string{"zone": "b"}),
		an("a", "bad", 2, nil),
		an("a", "pending", 1, nil),
		an("a", "broken", 5, nil),
		deleting,
	}
	r1, r2, r3 := rule("t", "r1", "t/web"), rule("t", "r2", "t/web"), rule("t", "r3", "t/web")
	out := render.Output{
		Rules: []rules.Rule{r1, r2, r3},
		Problems: []render.Problem{{Object: "AppNamespace a/bad", Field: "spec.secretRef.name", Reason: "SecretNotFound", Detail: "Secret a/s not found"},
			{Object: "SessionRule t/x", Field: "spec", Reason: "bad reason!", Detail: "nope"}},
	}
	in := StatusInput{
		Transport: hsv1.TransportKernel, CertKeyPairs: 2,
		NodeLabels: node, AppNamespaces: ans, Render: out,
		Conflicts:       []rules.Conflict{{Loser: r3, Winner: r1}},
		Applied:         map[string]bool{"t/web": true},
		ApplyErrors:     map[string]string{"a/broken": "adding app namespace a/broken: boom"},
		Stats:           map[string]session.NamespaceStats{"t/web": {Namespace: "t/web", Apps: 2, Sessions: 7, SegmentBytes: 4096}},
		Engine:          hsv1.EngineRunning,
		Version:         "v1",
		RulesGeneration: 4,
	}
	got := BuildStatus(in)
	wantANs := []hsv1.AppNamespaceNodeStatus{
		{Namespace: "a", Name: "bad", ObservedGeneration: 2, State: hsv1.AppNamespaceFailed, Message: "spec.secretRef.name: Secret a/s not found"},
		{Namespace: "a", Name: "broken", ObservedGeneration: 5, State: hsv1.AppNamespaceFailed, Message: "adding app namespace a/broken: boom"},
		{Namespace: "a", Name: "pending", ObservedGeneration: 1, State: hsv1.AppNamespacePending},
		{Namespace: "t", Name: "web", ObservedGeneration: 3, State: hsv1.AppNamespaceReady, Rules: 2, Transport: hsv1.TransportKernel},
	}
	if !reflect.DeepEqual(got.AppNamespaces, wantANs) {
		t.Errorf("appNamespaces:\n got %+v\nwant %+v", got.AppNamespaces, wantANs)
	}
	wantErrs := []hsv1.NodeError{
		{Reason: "SecretNotFound", Message: "spec.secretRef.name: Secret a/s not found", Object: "AppNamespace/a/bad"},
		{Reason: "InvalidObject", Message: "spec: nope", Object: "SessionRule/t/x"},
		{Reason: "RuleConflict", Message: `rule "t/r3" conflicts with older rule "t/r1" (same match)`, Object: "SessionRule/t/r3"},
		{Reason: "ApplyFailed", Message: "adding app namespace a/broken: boom", Object: "AppNamespace/a/broken"},
	}
	if !reflect.DeepEqual(got.Errors, wantErrs) {
		t.Errorf("errors:\n got %+v\nwant %+v", got.Errors, wantErrs)
	}
	if got.Engine != (hsv1.EngineStatus{State: hsv1.EngineDegraded, Version: "v1"}) || got.RulesGeneration != 4 {
		t.Errorf("engine %+v gen %d", got.Engine, got.RulesGeneration)
	}
	if got.Transport != (hsv1.TransportStatus{Type: hsv1.TransportKernel, State: hsv1.TransportUp}) || got.CertKeyPairs != 2 {
		t.Errorf("transport %+v, certKeyPairs %d", got.Transport, got.CertKeyPairs)
	}
	if c := ReadyCondition(got); c.Status != metav1.ConditionTrue || c.Reason != "Degraded" {
		t.Errorf("ready condition %+v", c)
	}
	// Equal inputs give equal outputs (the agent skips writes on equality).
	if again := BuildStatus(in); !reflect.DeepEqual(again, got) {
		t.Error("BuildStatus is not deterministic")
	}
}

func TestBuildStatusCases(t *testing.T) {
	long := strings.Repeat("x", 2000)
	for _, tc := range []struct {
		name  string
		in    StatusInput
		check func(t *testing.T, st hsv1.SessionNodeStatus)
	}{
		{"clean node runs", StatusInput{Engine: hsv1.EngineRunning, NodeLabels: map[string]string{},
			AppNamespaces: []hsv1.AppNamespace{an("n", "a", 1, nil)}, Applied: map[string]bool{"n/a": true}},
			func(t *testing.T, st hsv1.SessionNodeStatus) {
				if st.Engine.State != hsv1.EngineRunning || len(st.Errors) != 0 || len(st.AppNamespaces) != 1 || st.AppNamespaces[0].State != hsv1.AppNamespaceReady {
					t.Errorf("%+v", st)
				}
				if c := ReadyCondition(st); c.Status != metav1.ConditionTrue || c.Reason != "Running" {
					t.Errorf("%+v", c)
				}
			}},
		{"an Interface-mode namespace reports its link driver", StatusInput{Engine: hsv1.EngineRunning, Transport: hsv1.TransportKernel,
			AppNamespaces: []hsv1.AppNamespace{an("n", "edge", 1, nil), an("n", "pods", 1, nil)}, Applied: map[string]bool{"n/edge": true, "n/pods": true},
			Render: render.Output{Interfaces: []render.Interface{{Namespace: "n/edge", Name: "eth1", Driver: hsv1.LinkDriverAFPacket}}}},
			func(t *testing.T, st hsv1.SessionNodeStatus) {
				got := map[string]hsv1.TransportType{}
				for _, e := range st.AppNamespaces {
					got[e.Name] = e.Transport
				}
				if got["edge"] != hsv1.TransportAFPacket || got["pods"] != hsv1.TransportKernel {
					t.Errorf("transports %v", got)
				}
			}},
		{"no transport reports none", StatusInput{Engine: hsv1.EngineRunning},
			func(t *testing.T, st hsv1.SessionNodeStatus) {
				if st.Transport != (hsv1.TransportStatus{}) {
					t.Errorf("transport %+v, want none", st.Transport)
				}
			}},
		{"stopped drops everything", StatusInput{Engine: hsv1.EngineStopped, Transport: hsv1.TransportKernel,
			AppNamespaces: []hsv1.AppNamespace{an("n", "a", 1, nil)}, Applied: map[string]bool{"n/a": true}},
			func(t *testing.T, st hsv1.SessionNodeStatus) {
				if st.Engine.State != hsv1.EngineStopped || st.AppNamespaces != nil || st.Transport.State != hsv1.TransportDown {
					t.Errorf("%+v", st)
				}
				if c := ReadyCondition(st); c.Status != metav1.ConditionFalse || c.Reason != "Stopped" {
					t.Errorf("%+v", c)
				}
			}},
		{"no labels excludes selecting namespaces", StatusInput{Engine: hsv1.EngineRunning,
			AppNamespaces: []hsv1.AppNamespace{an("n", "a", 1, map[string]string{"k": "v"})}},
			func(t *testing.T, st hsv1.SessionNodeStatus) {
				if len(st.AppNamespaces) != 0 {
					t.Errorf("%+v", st.AppNamespaces)
				}
			}},
		{"long messages are clipped, errors capped", func() StatusInput {
			in := StatusInput{Engine: hsv1.EngineRunning, AppNamespaces: []hsv1.AppNamespace{an("n", "a", 1, nil)}}
			for range 40 {
				in.Render.Problems = append(in.Render.Problems, render.Problem{Object: "AppNamespace n/a", Field: "f", Reason: "R", Detail: long})
			}
			return in
		}(), func(t *testing.T, st hsv1.SessionNodeStatus) {
			if len(st.Errors) != 32 || len(st.Errors[0].Message) != 1024 || len(st.AppNamespaces[0].Message) != 1024 {
				t.Errorf("errors %d, message %d", len(st.Errors), len(st.Errors[0].Message))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, BuildStatus(tc.in)) })
	}
}

func TestPodAppNamespaces(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "p", Labels: map[string]string{"app": "web"}}}
	mk := func(ns, name string, sel map[string]string) hsv1.AppNamespace {
		a := an(ns, name, 1, nil)
		a.Spec.PodSelector = metav1.LabelSelector{MatchLabels: sel}
		return a
	}
	deleting := mk("team", "deleting", nil)
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	ans := []hsv1.AppNamespace{
		mk("team", "zz-all", nil),
		mk("team", "web", map[string]string{"app": "web"}),
		mk("team", "db", map[string]string{"app": "db"}),
		mk("other", "all", nil),
		mk("team", "unserved", nil),
		deleting,
	}
	served := func(k string) bool { return k != "team/unserved" }
	got := PodAppNamespaces(pod, ans, served)
	want := []string{"team/web", "team/zz-all"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := PodAppNamespaces(pod, nil, served); got != nil {
		t.Errorf("no AppNamespaces: %v", got)
	}
}

type verdict session.Action

func (v verdict) Lookup(session.RuleQuery) session.Verdict {
	return session.Verdict{Action: session.Action(v)}
}

func TestCollectorFollowsTheEngine(t *testing.T) {
	cr := &CountingRules{Next: verdict(session.Deny)}
	cr.Lookup(session.RuleQuery{Namespace: "t/web"})
	cr.Lookup(session.RuleQuery{Namespace: "t/web"})
	cr.Next = verdict(session.Allow)
	cr.Lookup(session.RuleQuery{Namespace: "t/web"})
	cr.Lookup(session.RuleQuery{Namespace: "t/web", Dir: session.Accept}) // not counted
	stats := []session.NamespaceStats{{Namespace: "t/web", Apps: 1, Sessions: 2, SegmentBytes: 3, Bytes: 4, SegmentResident: 5}}
	col := NewCollector(func() []session.NamespaceStats { return stats }, cr)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(col)
	got := gather(t, reg)
	for name, want := range map[string]float64{MetricRuleDenies: 2, MetricRuleLookups: 3, MetricApps: 1, MetricSessions: 2, MetricSegmentBytes: 3, MetricBytes: 4, MetricResident: 5} {
		if v, ok := got[name+`{app_namespace="t/web"}`]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v; all: %v", name, v, ok, want, got)
		}
	}
	// The app namespace goes: its series go with it.
	stats = nil
	cr.Retain(map[string]bool{})
	got = gather(t, reg)
	for k := range got {
		if strings.Contains(k, "{") {
			t.Errorf("series %s outlived its app namespace", k)
		}
	}
	if l, d := cr.Counts("t/web"); l != 0 || d != 0 {
		t.Errorf("counters kept: %d %d", l, d)
	}
}

// gather returns every series of reg as "name{label=\"v\",...}" -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"=\""+l.GetValue()+"\"")
			}
			k := mf.GetName()
			if len(ls) > 0 {
				k += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.GetGauge() != nil:
				out[k] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[k] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func TestErrorFor(t *testing.T) {
	for _, tc := range []struct {
		err  error
		key  string
		want string
	}{
		{nil, "a/b", "not applied"},
		{errors.Join(errors.New("adding app namespace a/b: boom"), errors.New("updating app namespace c/d: bang")), "c/d", "updating app namespace c/d: bang"},
		{errors.New("something else"), "a/b", "something else"},
	} {
		if got := errorFor(tc.err, tc.key); got != tc.want {
			t.Errorf("errorFor(%v, %s) = %q, want %q", tc.err, tc.key, got, tc.want)
		}
	}
}
