/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

func TestInjectPod(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	appNS := func(name string, created time.Time, sel metav1.LabelSelector) hsv1.AppNamespace {
		return hsv1.AppNamespace{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", CreationTimestamp: metav1.NewTime(created)},
			Spec:       hsv1.AppNamespaceSpec{PodSelector: sel},
		}
	}
	web := metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	all := metav1.LabelSelector{}
	deleting := appNS("deleting", t0, all)
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	badSel := appNS("bad", t0, metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "app", Operator: "Sideways"}}})

	pod := func(mods ...func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
		for _, m := range mods {
			m(p)
		}
		return p
	}
	wantEnv := func(an string) []corev1.EnvVar {
		return []corev1.EnvVar{
			{Name: EnvSocket, Value: "/var/run/hoststack/session.sock"},
			{Name: EnvAppNamespace, Value: "shop/" + an},
		}
	}
	wantMount := []corev1.VolumeMount{{Name: AttachVolumeName, MountPath: AttachMountPath}}
	// injected is pod p as the webhook should leave it, attached to an.
	injected := func(p *corev1.Pod, an string) *corev1.Pod {
		p = p.DeepCopy()
		p.Spec.Volumes = append(p.Spec.Volumes, attachVolume(an))
		for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
			for i := range cs {
				cs[i].VolumeMounts = append(cs[i].VolumeMounts, wantMount...)
				cs[i].Env = append(cs[i].Env, wantEnv(an)...)
			}
		}
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[InjectedAnnotation] = "shop/" + an
		return p
	}

	tests := []struct {
		name         string
		pod          *corev1.Pod
		candidates   []hsv1.AppNamespace
		want         *corev1.Pod // nil: unchanged
		wantAN       string
		wantWarnings []string // substrings, one per warning, in order
	}{
		{name: "no AppNamespaces", pod: pod()},
		{name: "not selected", pod: pod(), candidates: []hsv1.AppNamespace{
			appNS("db", t0, metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}})}},
		{name: "selected", pod: pod(), candidates: []hsv1.AppNamespace{appNS("web", t0, web)},
			want: injected(pod(), "web"), wantAN: "web"},
		{name: "empty selector selects every pod", pod: pod(func(p *corev1.Pod) { p.Labels = nil }),
			candidates: []hsv1.AppNamespace{appNS("all", t0, all)},
			want:       injected(pod(func(p *corev1.Pod) { p.Labels = nil }), "all"), wantAN: "all"},
		{name: "deleting and invalid selectors select nothing", pod: pod(),
			candidates: []hsv1.AppNamespace{deleting, badSel}},
		{name: "several: the oldest wins, warning names the others", pod: pod(),
			candidates: []hsv1.AppNamespace{
				appNS("young", t0.Add(time.Hour), all), appNS("old", t0, web), appNS("older-b", t0.Add(-time.Hour), web),
				appNS("older-a", t0.Add(-time.Hour), all)},
			want: injected(pod(), "older-a"), wantAN: "older-a",
			wantWarnings: []string{"attached to older-a (the oldest), not to older-b, old, young"}},
		{name: "init containers too", pod: pod(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "init"}}
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "side"})
		}), candidates: []hsv1.AppNamespace{appNS("web", t0, web)},
			want: injected(pod(func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "init"}}
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "side"})
			}), "web"), wantAN: "web"},
		{name: "opt-out", pod: pod(func(p *corev1.Pod) { p.Annotations = map[string]string{InjectAnnotation: "false"} }),
			candidates: []hsv1.AppNamespace{appNS("web", t0, web)}},
		{name: "opt-in annotation is the default",
			pod:        pod(func(p *corev1.Pod) { p.Annotations = map[string]string{InjectAnnotation: "true"} }),
			candidates: []hsv1.AppNamespace{appNS("web", t0, web)},
			want:       injected(pod(func(p *corev1.Pod) { p.Annotations = map[string]string{InjectAnnotation: "true"} }), "web"),
			wantAN:     "web"},
		{name: "bad opt-out value warns and injects",
			pod:        pod(func(p *corev1.Pod) { p.Annotations = map[string]string{InjectAnnotation: "nope"} }),
			candidates: []hsv1.AppNamespace{appNS("web", t0, web)},
			want:       injected(pod(func(p *corev1.Pod) { p.Annotations = map[string]string{InjectAnnotation: "nope"} }), "web"),
			wantAN:     "web", wantWarnings: []string{`hoststack.dev/inject="nope" is not a boolean`}},
		{name: "user's env kept, not duplicated", pod: pod(func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: EnvSocket, Value: "/elsewhere.sock"}}
		}), candidates: []hsv1.AppNamespace{appNS("web", t0, web)},
			want: func() *corev1.Pod {
				p := injected(pod(), "web")
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: EnvSocket, Value: "/elsewhere.sock"}, wantEnv("web")[1]}
				return p
			}(), wantAN: "web",
			wantWarnings: []string{`container "app" sets HOSTSTACK_SOCKET itself; kept`}},
		{name: "user's volume of the same name: nothing injected", pod: pod(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: AttachVolumeName, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		}), candidates: []hsv1.AppNamespace{appNS("web", t0, web)}, wantAN: "web",
			wantWarnings: []string{`pod already has volume "hoststack"`}},
		{name: "user's volume of our driver for another AppNamespace: nothing injected", pod: pod(func(p *corev1.Pod) {
			v := attachVolume("other")
			v.Name = "mine"
			p.Spec.Volumes = []corev1.Volume{v}
		}), candidates: []hsv1.AppNamespace{appNS("web", t0, web)}, wantAN: "web",
			wantWarnings: []string{`pod already has volume "mine"`}},
		{name: "container's own mount at the path: that container skipped", pod: pod(func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "x", MountPath: AttachMountPath + "/"}}
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "side"})
		}), candidates: []hsv1.AppNamespace{appNS("web", t0, web)},
			want: func() *corev1.Pod {
				p := injected(pod(func(p *corev1.Pod) {
					p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "side"})
				}), "web")
				p.Spec.Containers[0] = corev1.Container{Name: "app", Image: "app",
					VolumeMounts: []corev1.VolumeMount{{Name: "x", MountPath: AttachMountPath + "/"}}}
				return p
			}(), wantAN: "web",
			wantWarnings: []string{`container "app" already mounts volume "x"`}},
		{name: "container mounting the volume elsewhere keeps its path", pod: pod(func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: AttachVolumeName, MountPath: "/hs"}}
		}), candidates: []hsv1.AppNamespace{appNS("web", t0, web)},
			want: func() *corev1.Pod {
				p := injected(pod(), "web")
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: AttachVolumeName, MountPath: "/hs"}}
				p.Spec.Containers[0].Env[0].Value = "/hs/session.sock"
				return p
			}(), wantAN: "web"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.pod.DeepCopy()
			res := injectPod(p, "shop", tt.candidates)
			want := tt.want
			if want == nil {
				want = tt.pod
			}
			if !equality.Semantic.DeepEqual(p, want) {
				t.Errorf("pod:\n got %+v\nwant %+v", p, want)
			}
			if res.Changed != (tt.want != nil) {
				t.Errorf("Changed = %v", res.Changed)
			}
			if res.AppNamespace != tt.wantAN {
				t.Errorf("AppNamespace = %q, want %q", res.AppNamespace, tt.wantAN)
			}
			if len(res.Warnings) != len(tt.wantWarnings) {
				t.Fatalf("warnings %q, want %d", res.Warnings, len(tt.wantWarnings))
			}
			for i, w := range tt.wantWarnings {
				if !strings.Contains(res.Warnings[i], w) {
					t.Errorf("warning %q does not contain %q", res.Warnings[i], w)
				}
			}

			// Idempotent: a second pass changes nothing and warns the same.
			again := p.DeepCopy()
			res2 := injectPod(again, "shop", tt.candidates)
			if res2.Changed || !equality.Semantic.DeepEqual(again, p) {
				t.Errorf("second pass changed the pod:\n got %+v\nwant %+v", again, p)
			}
			if len(res2.Warnings) != len(res.Warnings) {
				t.Errorf("second pass warnings %q, first %q", res2.Warnings, res.Warnings)
			}
		})
	}
}
