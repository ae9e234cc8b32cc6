/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"sync"
	"testing"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// warnings collects the admission warnings the API server returns.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.list...)
}

func testPod(ns, name string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers:     []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
}

// waitInjecting waits until the webhook injects pods labelled app=web of
// ns: a server-side dry run goes through admission (the webhook has no
// side effects), so this waits for the manager's cache to hold the
// AppNamespace without creating anything.
func waitInjecting(g *gomega.WithT, ns, appNamespace string) {
	g.Eventually(func(g gomega.Gomega) {
		p := testPod(ns, "probe", map[string]string{"app": "web"}, nil)
		g.Expect(k8s.Create(context.Background(), p, client.DryRunAll)).To(gomega.Succeed())
		g.Expect(p.Annotations).To(gomega.HaveKeyWithValue(InjectedAnnotation, ns+"/"+appNamespace))
	}).Should(gomega.Succeed())
}

func TestPodWebhook(t *testing.T) {
	needAPIServer(t)
	g := newG(t)
	ctx := context.Background()
	ns := testNamespace(t, "podhook")
	an := &hsv1.AppNamespace{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       hsv1.AppNamespaceSpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}
	g.Expect(k8s.Create(ctx, an)).To(gomega.Succeed())
	waitInjecting(g, ns, "web")

	t.Run("selected pod is attached", func(t *testing.T) {
		g := newG(t)
		p := testPod(ns, "selected", map[string]string{"app": "web"}, nil)
		g.Expect(k8s.Create(ctx, p)).To(gomega.Succeed())
		got := &corev1.Pod{}
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(p), got)).To(gomega.Succeed())

		g.Expect(got.Annotations).To(gomega.HaveKeyWithValue(InjectedAnnotation, ns+"/web"))
		g.Expect(got.Spec.Volumes).To(gomega.ContainElement(gomega.And(
			gomega.HaveField("Name", AttachVolumeName),
			gomega.HaveField("CSI.Driver", CSIDriverName),
			gomega.HaveField("CSI.ReadOnly", gomega.HaveValue(gomega.BeFalse())),
			gomega.HaveField("CSI.VolumeAttributes", gomega.Equal(map[string]string{CSIAttrAppNamespace: "web"})),
		)))
		for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
			g.Expect(c.VolumeMounts).To(gomega.ContainElement(gomega.And(
				gomega.HaveField("Name", AttachVolumeName), gomega.HaveField("MountPath", AttachMountPath))), "container %s", c.Name)
			g.Expect(c.Env).To(gomega.ContainElements(
				corev1.EnvVar{Name: EnvSocket, Value: "/var/run/hoststack/session.sock"},
				corev1.EnvVar{Name: EnvAppNamespace, Value: ns + "/web"}), "container %s", c.Name)
		}
	})

	t.Run("unselected pod is unchanged", func(t *testing.T) {
		g := newG(t)
		p := testPod(ns, "unselected", map[string]string{"app": "db"}, nil)
		g.Expect(k8s.Create(ctx, p)).To(gomega.Succeed())
		expectNotInjected(g, p)
	})

	t.Run("opted-out pod is unchanged", func(t *testing.T) {
		g := newG(t)
		p := testPod(ns, "opted-out", map[string]string{"app": "web"}, map[string]string{InjectAnnotation: "false"})
		g.Expect(k8s.Create(ctx, p)).To(gomega.Succeed())
		expectNotInjected(g, p)
	})

	t.Run("several AppNamespaces: the oldest, with a warning", func(t *testing.T) {
		g := newG(t)
		// Created after "web", so younger (or, within the same second,
		// later by name).
		extra := &hsv1.AppNamespace{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "zz-all"},
			Spec:       hsv1.AppNamespaceSpec{PodSelector: metav1.LabelSelector{}},
		}
		g.Expect(k8s.Create(ctx, extra)).To(gomega.Succeed())
		w := &warnings{}
		cfg := rest.CopyConfig(testEnv.Config)
		cfg.WarningHandlerWithContext = w
		wc, err := client.New(cfg, client.Options{Scheme: k8s.Scheme()})
		g.Expect(err).NotTo(gomega.HaveOccurred())
		// Until the cache holds zz-all the webhook does not warn: dry runs.
		g.Eventually(func(g gomega.Gomega) {
			before := len(w.get())
			g.Expect(wc.Create(ctx, testPod(ns, "probe", map[string]string{"app": "web"}, nil), client.DryRunAll)).To(gomega.Succeed())
			g.Expect(w.get()[before:]).To(gomega.ContainElement(gomega.ContainSubstring("attached to web (the oldest), not to zz-all")))
		}).Should(gomega.Succeed())

		p := testPod(ns, "several", map[string]string{"app": "web"}, nil)
		g.Expect(wc.Create(ctx, p)).To(gomega.Succeed())
		g.Expect(p.Annotations).To(gomega.HaveKeyWithValue(InjectedAnnotation, ns+"/web"))
	})

	t.Run("namespace not opted in: not injected, reported", func(t *testing.T) {
		g := newG(t)
		off := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "podhook-off-"}}
		g.Expect(k8s.Create(ctx, off)).To(gomega.Succeed())
		all := &hsv1.AppNamespace{
			ObjectMeta: metav1.ObjectMeta{Namespace: off.Name, Name: "all"},
			Spec:       hsv1.AppNamespaceSpec{PodSelector: metav1.LabelSelector{}},
		}
		g.Expect(k8s.Create(ctx, all)).To(gomega.Succeed())
		// The reconciler has evaluated it, so the manager's cache holds it.
		wantCondition(g, &hsv1.AppNamespace{ObjectMeta: metav1.ObjectMeta{Namespace: off.Name, Name: "all"}},
			hsv1.ConditionValid, metav1.ConditionTrue, hsv1.ReasonValid)
		p := testPod(off.Name, "p", map[string]string{"app": "web"}, nil)
		g.Expect(k8s.Create(ctx, p)).To(gomega.Succeed())
		expectNotInjected(g, p)
		opted := testPod(off.Name, "opted-out", nil, map[string]string{InjectAnnotation: "false"})
		g.Expect(k8s.Create(ctx, opted)).To(gomega.Succeed())

		// Reported: a count on the AppNamespace (not the opted-out pod) and
		// an Event on the pod.
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(all), all)).To(gomega.Succeed())
			g.Expect(all.Status.PodsNotInjected).To(gomega.Equal(int32(1)))
		}).Should(gomega.Succeed())
		g.Eventually(func(g gomega.Gomega) {
			var evs eventsv1.EventList
			g.Expect(k8s.List(ctx, &evs, client.InNamespace(off.Name))).To(gomega.Succeed())
			var notes []string
			for _, e := range evs.Items {
				if e.Reason == ReasonNotInjected && e.Regarding.Kind == "Pod" && e.Regarding.Name == "p" {
					notes = append(notes, e.Note)
				}
			}
			g.Expect(notes).To(gomega.ConsistOf(gomega.ContainSubstring(WebhookNamespaceLabel + "=" + WebhookNamespaceEnabled)))
		}).Should(gomega.Succeed())

		// The pod goes: so does the count.
		g.Expect(k8s.Delete(ctx, p, client.GracePeriodSeconds(0))).To(gomega.Succeed())
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(all), all)).To(gomega.Succeed())
			g.Expect(all.Status.PodsNotInjected).To(gomega.BeZero())
		}).Should(gomega.Succeed())
	})
}

func expectNotInjected(g *gomega.WithT, p *corev1.Pod) {
	got := &corev1.Pod{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(p), got)).To(gomega.Succeed())
	g.Expect(got.Annotations).NotTo(gomega.HaveKey(InjectedAnnotation))
	g.Expect(got.Spec.Volumes).NotTo(gomega.ContainElement(gomega.HaveField("Name", AttachVolumeName)))
	for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
		g.Expect(c.VolumeMounts).NotTo(gomega.ContainElement(gomega.HaveField("Name", AttachVolumeName)))
		g.Expect(c.Env).NotTo(gomega.ContainElement(gomega.HaveField("Name", EnvSocket)))
	}
}
