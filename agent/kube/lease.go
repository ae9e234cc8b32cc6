package kube

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultLeaseDuration is how long the manager counts a node as serving
// after its agent's last renewal (kubelet's node Lease uses the same).
const DefaultLeaseDuration = 40 * time.Second

// DefaultAgentNamespace is where agents renew their Leases when the agent
// does not know its own pod's namespace.
const DefaultAgentNamespace = "hoststack-node"

// leaseRenewer keeps the Lease named after the node, in the agent's
// namespace, renewed: the manager's proof that the agent is alive. A
// SessionNode status only says what the agent last thought; a SIGKILLed
// or powered-off agent says nothing more, and the Lease expiring is what
// tells. Like kubelet, it renews every quarter of the duration from the
// copy it last wrote (one write per renewal, no read), and reads the Lease
// again only on a conflict.
type leaseRenewer struct {
	c         client.Client // writes
	api       client.Reader // uncached reads: no Lease informer
	namespace string
	node      string
	duration  time.Duration
	log       func(msg string, args ...any)

	lease *coordinationv1.Lease // as last written; nil: read or create
}

func (l *leaseRenewer) run(ctx context.Context) error {
	every := l.duration / 4
	for {
		if err := l.renew(ctx); err != nil && ctx.Err() == nil {
			l.log("renewing the node Lease failed; the manager stops counting this node when it expires",
				"lease", l.namespace+"/"+l.node, "err", err)
			// Retry sooner than a full period: the Lease may be close to
			// expiring.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(every / 4):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

func (l *leaseRenewer) renew(ctx context.Context) error {
	now := metav1.NowMicro()
	secs := int32((l.duration + time.Second - 1) / time.Second)
	if l.lease == nil {
		cur := &coordinationv1.Lease{}
		err := l.api.Get(ctx, client.ObjectKey{Namespace: l.namespace, Name: l.node}, cur)
		switch {
		case apierrors.IsNotFound(err):
			cur = &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Namespace: l.namespace, Name: l.node},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity:       ptr.To(l.node),
					LeaseDurationSeconds: ptr.To(secs),
					AcquireTime:          &now,
					RenewTime:            &now,
				},
			}
			if err := l.c.Create(ctx, cur); err != nil {
				return fmt.Errorf("create Lease %s/%s: %w", l.namespace, l.node, err)
			}
			l.lease = cur
			return nil
		case err != nil:
			return fmt.Errorf("get Lease %s/%s: %w", l.namespace, l.node, err)
		}
		l.lease = cur
	}
	next := l.lease.DeepCopy()
	next.Spec.HolderIdentity = ptr.To(l.node)
	next.Spec.LeaseDurationSeconds = ptr.To(secs)
	next.Spec.RenewTime = &now
	if err := l.c.Update(ctx, next); err != nil {
		l.lease = nil // read it again next time
		return fmt.Errorf("update Lease %s/%s: %w", l.namespace, l.node, err)
	}
	l.lease = next
	return nil
}
