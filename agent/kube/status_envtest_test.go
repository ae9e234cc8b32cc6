package kube

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// TestStatusAppNamespacesCappedBeforeApply: a node serving more
// AppNamespaces than SessionNode status.appNamespaces may hold still gets
// its status written by the real API server — the list capped, the cap
// reported — instead of the whole write being refused.
func TestStatusAppNamespacesCappedBeforeApply(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runs++
	nodeName := fmt.Sprintf("capped-node-%d", runs)
	in := StatusInput{Engine: hsv1.EngineRunning, Applied: map[string]bool{}}
	for i := range hsv1.MaxNodeAppNamespaces + 10 {
		an := hsv1.AppNamespace{ObjectMeta: metav1.ObjectMeta{Namespace: "many", Name: fmt.Sprintf("an-%05d", i), Generation: 1}}
		in.AppNamespaces = append(in.AppNamespaces, an)
		in.Applied["many/"+an.Name] = true
	}
	st := BuildStatus(in)
	g.Expect(st.AppNamespaces).To(gomega.HaveLen(hsv1.MaxNodeAppNamespaces))
	g.Expect(st.Errors).To(gomega.ContainElement(gomega.HaveField("Reason", ReasonTooManyAppNamespaces)))

	gvk := hsv1.GroupVersion.WithKind("SessionNode")
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(gvk)
	obj.SetName(nodeName)
	g.Expect(k8s.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner(FieldOwner), client.ForceOwnership)).To(gomega.Succeed())
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&hsv1.SessionNode{Status: st})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	obj = &unstructured.Unstructured{Object: map[string]any{"status": m["status"]}}
	obj.SetGroupVersionKind(gvk)
	obj.SetName(nodeName)
	g.Expect(k8s.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner(FieldOwner), client.ForceOwnership)).To(gomega.Succeed())
	var sn hsv1.SessionNode
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
	g.Expect(sn.Status.AppNamespaces).To(gomega.HaveLen(hsv1.MaxNodeAppNamespaces))
	g.Expect(sn.Status.Errors[0].Reason).To(gomega.Equal(ReasonTooManyAppNamespaces))
}
