package kube

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/session"
)

func TestPodSocketAccess(t *testing.T) {
	ctr := func(sc *corev1.SecurityContext) corev1.Container {
		return corev1.Container{Name: "c", SecurityContext: sc}
	}
	caps := func(add ...corev1.Capability) *corev1.SecurityContext {
		return &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: add}}
	}
	pod := func(psc *corev1.PodSecurityContext, cs ...corev1.Container) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{SecurityContext: psc, Containers: cs}}
	}
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		priv     bool
		mode     uint32
		uid, gid int // -1: not set
	}{
		{"defaults: the image decides the user", pod(nil, ctr(nil)), false, 0o666, -1, -1},
		{"NET_BIND_SERVICE added", pod(nil, ctr(caps("NET_BIND_SERVICE"))), true, 0o666, -1, -1},
		{"CAP_ prefix", pod(nil, ctr(nil), ctr(caps("CAP_NET_BIND_SERVICE"))), true, 0o666, -1, -1},
		{"other capabilities only", pod(nil, ctr(caps("NET_ADMIN"))), false, 0o666, -1, -1},
		{"privileged container", pod(nil, ctr(&corev1.SecurityContext{Privileged: ptr.To(true)})), true, 0o666, -1, -1},
		{"fsGroup", pod(&corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000), RunAsUser: ptr.To[int64](1000)}, ctr(nil)), false, 0o660, -1, 2000},
		{"pod runAsUser", pod(&corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000)}, ctr(nil), ctr(nil)), false, 0o600, 1000, -1},
		{"container users differ, group shared", pod(&corev1.PodSecurityContext{RunAsGroup: ptr.To[int64](3000)},
			ctr(&corev1.SecurityContext{RunAsUser: ptr.To[int64](1)}), ctr(&corev1.SecurityContext{RunAsUser: ptr.To[int64](2)})), false, 0o660, -1, 3000},
		{"user namespace", func() *corev1.Pod {
			p := pod(&corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000)}, ctr(nil))
			p.Spec.HostUsers = ptr.To(false)
			return p
		}(), false, 0o666, -1, -1},
		{"one container's user unknown", pod(nil, ctr(&corev1.SecurityContext{RunAsUser: ptr.To[int64](1)}), ctr(nil)), false, 0o666, -1, -1},
	} {
		got := PodSocketAccess(tc.pod)
		val := func(p *int) int {
			if p == nil {
				return -1
			}
			return *p
		}
		if got.PrivilegedPorts != tc.priv || uint32(got.Mode) != tc.mode || val(got.UID) != tc.uid || val(got.GID) != tc.gid {
			t.Errorf("%s: got priv %v mode %o uid %d gid %d, want %v %o %d %d", tc.name, got.PrivilegedPorts, got.Mode, val(got.UID), val(got.GID),
				tc.priv, tc.mode, tc.uid, tc.gid)
		}
	}
	// init containers (sidecars) count for the capability
	p := pod(nil, ctr(nil))
	p.Spec.InitContainers = []corev1.Container{ctr(caps("NET_BIND_SERVICE"))}
	if !PodSocketAccess(p).PrivilegedPorts {
		t.Error("a sidecar's NET_BIND_SERVICE not counted")
	}
}

func TestLimitCondition(t *testing.T) {
	base := session.LimitStatus{Apps: 3, MaxApps: 10, Workers: 4, MaxWorkers: 20, Threads: 30, MaxThreads: 100}
	c := LimitCondition(base, false)
	if c.Type != hsv1.ConditionEngineLimitReached || c.Status != metav1.ConditionFalse || c.Reason != hsv1.ReasonWithinLimits {
		t.Fatalf("within limits: %+v", c)
	}
	at := base
	at.Workers = 20
	c = LimitCondition(at, false)
	if c.Status != metav1.ConditionTrue || c.Reason != hsv1.ReasonNodeMaxWorkers || !strings.Contains(c.Message, "workers 20/20") {
		t.Fatalf("at the worker cap: %+v", c)
	}
	at.Threads = 100
	if c := LimitCondition(at, false); c.Reason != hsv1.ReasonNodeMaxWorkers || !strings.Contains(c.Message, "nodeMaxWorkers, nodeMaxThreads") {
		t.Fatalf("two caps: %+v", c)
	}
	ref := base
	ref.LastRefusal = "node limit nodeMaxThreads (100) reached: the session engine has 100 OS threads"
	if c := LimitCondition(ref, true); c.Status != metav1.ConditionTrue || c.Reason != hsv1.ReasonNodeMaxThreads || !strings.Contains(c.Message, ref.LastRefusal) {
		t.Fatalf("a refusal since the last report: %+v", c)
	}
	if c := LimitCondition(ref, false); c.Status != metav1.ConditionFalse {
		t.Fatalf("an old refusal: %+v", c)
	}
}
