/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

func TestJudgeLiveness(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	lease := func(renewed time.Duration, secs int32) *coordinationv1.Lease {
		return &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{
			RenewTime: &metav1.MicroTime{Time: now.Add(-renewed)}, LeaseDurationSeconds: ptr.To(secs)}}
	}
	node := func(ready corev1.ConditionStatus) *corev1.Node {
		n := &corev1.Node{}
		if ready != "" {
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready, Reason: "KubeletStopped"}}
		}
		return n
	}
	tests := []struct {
		name    string
		node    *corev1.Node
		lease   *coordinationv1.Lease
		ok      bool
		reason  string
		msg     string
		recheck time.Duration
	}{
		{"fresh Lease", node(""), lease(10*time.Second, 40), true, hsv1.ReasonLeaseRenewed, "renews Lease hoststack-node/n1 (duration 40s)", 30*time.Second + 100*time.Millisecond},
		{"fresh Lease, Node Ready", node(corev1.ConditionTrue), lease(0, 40), true, hsv1.ReasonLeaseRenewed, "", 40*time.Second + 100*time.Millisecond},
		{"no Node object", nil, lease(0, 40), true, hsv1.ReasonLeaseRenewed, "", 40*time.Second + 100*time.Millisecond},
		{"expired", node(""), lease(41*time.Second, 40), false, hsv1.ReasonLeaseExpired, "last renewed Lease hoststack-node/n1 at 2026-12-07T11:59:19Z; it expired after 40s", 0},
		{"expires exactly now", node(""), lease(40*time.Second, 40), false, hsv1.ReasonLeaseExpired, "", 0},
		{"no Lease", node(""), nil, false, hsv1.ReasonLeaseMissing, "has not created its Lease hoststack-node/n1", 0},
		{"Lease without duration", node(""), &coordinationv1.Lease{}, false, hsv1.ReasonLeaseExpired, "no renewTime", 0},
		{"Node NotReady beats a fresh Lease", node(corev1.ConditionFalse), lease(0, 40), false, hsv1.ReasonNodeNotReady, "Node n1 is Ready=False (KubeletStopped)", 0},
		{"Node Unknown", node(corev1.ConditionUnknown), lease(0, 40), false, hsv1.ReasonNodeNotReady, "Ready=Unknown", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := judgeLiveness("hoststack-node", "n1", tt.node, tt.lease, now)
			c := v.cond
			if c.Type != hsv1.ConditionServing || (c.Status == metav1.ConditionTrue) != tt.ok || c.Reason != tt.reason || !strings.Contains(c.Message, tt.msg) {
				t.Fatalf("got %+v, want ok=%v %s containing %q", c, tt.ok, tt.reason, tt.msg)
			}
			if v.recheck != tt.recheck {
				t.Errorf("recheck %s, want %s", v.recheck, tt.recheck)
			}
		})
	}
}

func TestOwnerGone(t *testing.T) {
	sn := &hsv1.SessionNode{}
	sn.Name = "n1"
	if ownerGone(sn, nil) {
		t.Error("a SessionNode without owner is not collected")
	}
	sn.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "n1", UID: "u1"}}
	same := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: types.UID("u1")}}
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: types.UID("u2")}}
	if ownerGone(sn, same) || !ownerGone(sn, nil) || !ownerGone(sn, other) {
		t.Error("owner: kept while its Node exists, gone when deleted or replaced")
	}
}
