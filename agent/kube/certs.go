package kube

import (
	"context"
	"errors"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	enginetls "github.com/hoststack/hoststack/engine/tls"
)

// certState is what the agent loaded for one CertKeyPair.
type certState struct {
	secretVersion string
	err           string // why the material was refused; "" when loaded
}

// syncCertKeyPairs loads into the engine's TLS store the CertKeyPairs the
// apps of this node may use: those of the Kubernetes namespaces of the
// AppNamespaces it serves (an app may use only pairs of its own namespace).
// The material comes from the copy the manager publishes in the agent
// namespace (the agent cannot read the teams' Secrets), from the cache: a
// rotation reaches the watch, and new handshakes use the new certificate.
// A copy whose version did not change is not parsed again. Refused
// material keeps the previous good pair in service and becomes a node
// error.
func (a *Agent) syncCertKeyPairs(ctx context.Context, namespaces map[string]bool) ([]hsv1.NodeError, error) {
	var list hsv1.CertKeyPairList
	if err := a.c.List(ctx, &list); err != nil {
		return nil, err
	}
	keep := map[client.ObjectKey]bool{}
	var errs []hsv1.NodeError
	for i := range list.Items {
		ckp := &list.Items[i]
		if !namespaces[ckp.Namespace] {
			continue
		}
		key := client.ObjectKeyFromObject(ckp)
		keep[key] = true
		skey := client.ObjectKey{Namespace: a.o.AgentNamespace, Name: hsv1.PublishedSecretName("CertKeyPair", ckp.Namespace, ckp.Name)}
		from := ckp.Namespace + "/" + ckp.Spec.SecretRef.Name
		var s corev1.Secret
		var certPEM, keyPEM []byte
		var loadErr error
		switch err := a.c.Get(ctx, skey, &s); {
		case err == nil && s.Annotations[hsv1.AnnotationPublishedFrom] != from:
			// The manager has not caught up with a changed secretRef.
			s = corev1.Secret{}
			loadErr = fmt.Errorf("Secret %s not published yet", from)
		case err == nil:
			if prev, ok := a.certs[key]; ok && prev.secretVersion == s.ResourceVersion {
				if prev.err != "" {
					errs = append(errs, certError(key, prev.err))
				}
				continue
			}
			certPEM, keyPEM, loadErr = enginetls.SecretData(s.Data)
		case apierrors.IsNotFound(err):
			// The manager publishes only a TLS Secret that exists.
			loadErr = fmt.Errorf("Secret %s not found (or not of type kubernetes.io/tls)", from)
		default:
			return nil, fmt.Errorf("reading the published Secret %s of CertKeyPair %s: %w", skey, key, err)
		}
		if loadErr == nil {
			loadErr = a.tls.Set(ckp.Namespace, ckp.Name, certPEM, keyPEM)
		}
		if loadErr == nil {
			// cert-manager's ca.crt: what connects naming this pair as
			// their trust anchor verify servers against
			loadErr = a.tls.SetCA(ckp.Namespace, ckp.Name, s.Data["ca.crt"])
		}
		st := certState{secretVersion: s.ResourceVersion}
		if loadErr != nil {
			var me *enginetls.MaterialError
			if errors.As(loadErr, &me) || s.ResourceVersion == "" {
				st.err = loadErr.Error()
			} else {
				st.err = "loading: " + loadErr.Error()
			}
			errs = append(errs, certError(key, st.err))
		} else {
			a.log.Info("CertKeyPair loaded", "certKeyPair", key.String(), "secretVersion", s.ResourceVersion)
		}
		a.certs[key] = st
	}
	for key := range a.certs {
		if !keep[key] {
			a.tls.Remove(key.Namespace, key.Name)
			delete(a.certs, key)
			a.log.Info("CertKeyPair unloaded", "certKeyPair", key.String())
		}
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Object < errs[j].Object })
	return errs, nil
}

func certError(key client.ObjectKey, msg string) hsv1.NodeError {
	return hsv1.NodeError{Reason: "CertKeyPairNotLoaded", Message: truncate(msg, 1024), Object: "CertKeyPair/" + key.String()}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// loadedCerts counts the CertKeyPairs in service (under mu).
func (a *Agent) loadedCerts() int {
	n := 0
	for _, st := range a.certs {
		if st.err == "" {
			n++
		}
	}
	return n
}
