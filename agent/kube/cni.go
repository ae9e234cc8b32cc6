package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/hoststack/hoststack/agent/cni"
)

// ConditionCNIChained is the SessionNode condition saying whether the
// hoststack-cni plugin is chained into the node's CNI configuration.
const ConditionCNIChained = "CNIChained"

// CNICondition is the CNIChained condition for a chain state (without
// time).
func CNICondition(st cni.ChainState) metav1.Condition {
	c := metav1.Condition{Type: ConditionCNIChained, Status: metav1.ConditionFalse, Reason: st.Reason, Message: clip(st.Message, 1024)}
	if st.Chained {
		c.Status = metav1.ConditionTrue
	}
	if c.Reason == "" {
		c.Reason = cni.ReasonInstallFailed
	}
	return c
}

func sameCondition(a, b metav1.Condition) bool {
	return a.Type == b.Type && a.Status == b.Status && a.Reason == b.Reason && a.Message == b.Message
}

// keepChained runs the CNI keeper until the returned stop is called; its
// state becomes the CNIChained condition. A failed install is only that
// condition: the CSI and CNI servers and cut-through work without it.
func (a *Agent) keepChained(ctx context.Context, log *slog.Logger) (stop func()) {
	kctx, cancel := context.WithCancel(ctx)
	a.mu.Lock()
	a.cniCnd = metav1.Condition{Type: ConditionCNIChained, Status: metav1.ConditionUnknown, Reason: "Pending", Message: "not checked yet"}
	a.mu.Unlock()
	k := &cni.Keeper{
		Installer: cni.Installer{AgentSocket: a.o.CNISocket, PendingDir: a.o.CNIPendingDir},
		Binary:    a.o.CNIBinary, BinDir: a.o.CNIBinDir, ConfDir: a.o.CNIConfDir,
		Log: log,
		OnChange: func(st cni.ChainState) {
			a.mu.Lock()
			a.cniCnd = CNICondition(st)
			a.mu.Unlock()
			select {
			case a.kick <- event.GenericEvent{Object: &corev1.Node{}}:
			default: // a reconcile is already pending
			}
		},
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = k.Run(kctx) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// uninstallCNI removes the chain entry and the binary as the agent exits,
// if its CNIUninstall mode says so; with CNIUninstallWhenRemoved it also
// has the CNI state removed after the CNI server closed.
func (a *Agent) uninstallCNI(log *slog.Logger) {
	switch a.o.CNIUninstall {
	case CNIUninstallOnExit:
	case CNIUninstallWhenRemoved:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		removed, why, err := a.beingRemoved(ctx)
		cancel()
		if err != nil {
			log.Warn("keeping the CNI chain: cannot tell whether hoststack is being uninstalled", "err", err)
			return
		}
		if !removed {
			log.Info("keeping the CNI chain", "why", why)
			return
		}
		log.Info("hoststack is being uninstalled: removing the CNI chain", "why", why)
	default:
		return
	}
	if err := (cni.Installer{}).Uninstall(a.o.CNIConfDir); err != nil {
		log.Error("CNI chain entry not removed", "err", err)
		return // the binary and the state must outlive an entry that names them
	}
	if err := cni.RemoveBinary(a.o.CNIBinDir); err != nil {
		log.Error("CNI plugin binary not removed", "err", err)
		return
	}
	log.Info("CNI chain entry and plugin binary removed", "confDir", a.o.CNIConfDir, "binDir", a.o.CNIBinDir)
	a.dropCNIState = a.o.CNIUninstall == CNIUninstallWhenRemoved
}

// removeCNIState removes the attachment registry and the pending queue:
// hoststack is being uninstalled from the node.
func (a *Agent) removeCNIState(log *slog.Logger) {
	var errs []error
	for _, d := range []string{a.o.CNIStateDir, a.o.CNIPendingDir} {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		log.Error("CNI state not removed", "err", err)
		return
	}
	log.Info("CNI state removed", "stateDir", a.o.CNIStateDir, "pendingDir", a.o.CNIPendingDir)
}

// ownerDaemonSet reads the agent's pod and returns the DaemonSet owning
// it.
func ownerDaemonSet(o Options, scheme *runtime.Scheme) (*metav1.OwnerReference, error) {
	c, err := client.New(o.Config, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return readOwner(ctx, c, o.PodNamespace, o.PodName)
}

func readOwner(ctx context.Context, r client.Reader, namespace, name string) (*metav1.OwnerReference, error) {
	if name == "" || namespace == "" {
		return nil, errors.New("the agent's pod is unknown (POD_NAME and POD_NAMESPACE unset)")
	}
	var pod corev1.Pod
	key := client.ObjectKey{Namespace: namespace, Name: name}
	if err := r.Get(ctx, key, &pod); err != nil {
		return nil, fmt.Errorf("reading pod %s: %w", key, err)
	}
	owner := metav1.GetControllerOf(&pod)
	if owner == nil || owner.Kind != "DaemonSet" {
		return nil, fmt.Errorf("pod %s is not owned by a DaemonSet", key)
	}
	return owner, nil
}

// watchOwner records in ownerGone when the cache sees the agent's
// DaemonSet deleted, being deleted or replaced by another of its name.
func (a *Agent) watchOwner(ctx context.Context, mgr manager.Manager, owner metav1.OwnerReference) error {
	inf, err := mgr.GetCache().GetInformer(ctx, &appsv1.DaemonSet{})
	if err != nil {
		return fmt.Errorf("DaemonSet informer: %w", err)
	}
	judge := func(obj any, deleted bool) {
		if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj, deleted = d.Obj, true
		}
		ds, ok := obj.(*appsv1.DaemonSet)
		if !ok || ds.Name != owner.Name {
			return
		}
		var why string
		switch {
		case ds.UID != owner.UID:
			why = "DaemonSet " + ds.Namespace + "/" + ds.Name + " was replaced by another one"
		case deleted:
			why = "DaemonSet " + ds.Namespace + "/" + ds.Name + " was deleted"
		case ds.DeletionTimestamp != nil:
			why = "DaemonSet " + ds.Namespace + "/" + ds.Name + " is being deleted"
		default:
			return
		}
		a.ownerGone.Store(&why)
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { judge(obj, false) },
		UpdateFunc: func(_, obj any) { judge(obj, false) },
		DeleteFunc: func(obj any) { judge(obj, true) },
	})
	return err
}

// beingRemoved reports whether the DaemonSet owning the agent's pod is
// gone or being deleted, and why it thinks so: as watched while running,
// else as read now.
func (a *Agent) beingRemoved(ctx context.Context) (bool, string, error) {
	if why := a.ownerGone.Load(); why != nil {
		return true, *why, nil
	}
	owner, err := readOwner(ctx, a.api, a.o.PodNamespace, a.o.PodName)
	if err != nil {
		return false, "", err
	}
	var ds appsv1.DaemonSet
	dsKey := client.ObjectKey{Namespace: a.o.PodNamespace, Name: owner.Name}
	err = a.api.Get(ctx, dsKey, &ds)
	switch {
	case apierrors.IsNotFound(err):
		return true, "DaemonSet " + dsKey.String() + " is gone", nil
	case err != nil:
		return false, "", fmt.Errorf("reading DaemonSet %s: %w", dsKey, err)
	case ds.UID != owner.UID:
		return true, "DaemonSet " + dsKey.String() + " was replaced by another one", nil
	case ds.DeletionTimestamp != nil:
		return true, "DaemonSet " + dsKey.String() + " is being deleted", nil
	}
	return false, "DaemonSet " + dsKey.String() + " stays (restart, upgrade or drain)", nil
}
