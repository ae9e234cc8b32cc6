/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Sentinels for lookups; the returned errors wrap them with the app
// namespace and the pair.
var (
	// ErrNotFound: the app's namespace has no usable pair of that name.
	ErrNotFound = errors.New("certkeypair not found")
	// ErrForbidden: the pair belongs to another Kubernetes namespace.
	ErrForbidden = errors.New("certkeypair belongs to another namespace")
)

// key names a pair: Kubernetes namespace and CertKeyPair name.
type key struct{ namespace, name string }

func (k key) String() string { return k.namespace + "/" + k.name }

// slot is the stable home of one pair name. Rotation stores a new *Pair in
// cur, which is the only thing a handshake reads; the map holding slots is
// copied only when a name appears or disappears.
type slot struct {
	cur atomic.Pointer[Pair]
	// rejected is the last refused material while no good pair exists, so
	// a lookup can say why instead of just "not found".
	rejected atomic.Pointer[MaterialError]
}

// Store holds the CertKeyPairs of a node keyed by (namespace, name). Reads
// (Get, and every handshake through a config from ServerConfig or
// ClientConfig) take no lock: two atomic loads and a map lookup. Writers
// are serialised by a mutex and publish copy-on-write. The zero Store is
// empty and ready to use; a Store must not be copied after first use.
type Store struct {
	mu    sync.Mutex                    // serialises Set and Remove
	slots atomic.Pointer[map[key]*slot] // immutable once published
	now   func() time.Time              // for tests; nil means time.Now
	cas   atomic.Pointer[map[key]*x509.CertPool]
}

func (s *Store) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

func (s *Store) slot(k key) *slot {
	if m := s.slots.Load(); m != nil {
		return (*m)[k]
	}
	return nil
}

// validName refuses names that could not be a Kubernetes namespace or
// object name; in particular "/" would make "ns/name" references
// ambiguous.
func validName(what, v string) error {
	if v == "" {
		return fmt.Errorf("empty %s", what)
	}
	if len(v) > 253 || strings.ContainsAny(v, "/ \t\n") {
		return fmt.Errorf("invalid %s %q", what, v)
	}
	return nil
}

// Set validates certPEM and keyPEM (see MaterialError and the Reason
// constants) and makes them the pair namespace/name. Replacing a pair is
// rotation: handshakes that start afterwards use the new certificate;
// sessions that already completed their handshake are not affected (a TLS
// connection never looks at its certificate again). On error the previous
// pair, if any, stays in service and the error is a *MaterialError naming
// the pair.
func (s *Store) Set(namespace, name string, certPEM, keyPEM []byte) error {
	if err := validName("namespace", namespace); err != nil {
		return fmt.Errorf("certkeypair %s/%s: %w", namespace, name, err)
	}
	if err := validName("name", name); err != nil {
		return fmt.Errorf("certkeypair %s/%s: %w", namespace, name, err)
	}
	k := key{namespace, name}
	p, merr := parsePair(certPEM, keyPEM, s.clock())
	if merr != nil {
		merr.Namespace, merr.Name = namespace, name
	} else {
		p.Namespace, p.Name = namespace, name
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.slot(k)
	if sl == nil {
		sl = new(slot)
		s.publish(func(m map[key]*slot) { m[k] = sl })
	}
	if merr != nil {
		sl.rejected.Store(merr)
		return merr
	}
	sl.cur.Store(p)
	sl.rejected.Store(nil)
	return nil
}

// Remove forgets namespace/name. Configs built for it keep existing, but
// their next handshakes fail (KindNoCertificate) until the pair is Set
// again; open sessions are unaffected.
func (s *Store) Remove(namespace, name string) {
	k := key{namespace, name}
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.slot(k)
	if sl == nil {
		return
	}
	sl.cur.Store(nil) // in case a reader already holds the slot
	s.publish(func(m map[key]*slot) { delete(m, k) })
}

// publish installs a modified copy of the slot map. Callers hold s.mu.
func (s *Store) publish(edit func(map[key]*slot)) {
	var old map[key]*slot
	if p := s.slots.Load(); p != nil {
		old = *p
	}
	m := make(map[key]*slot, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	edit(m)
	s.slots.Store(&m)
}

// Get returns the current pair namespace/name, or nil. It performs no
// authorization: it is for the agent (status, logs), not for serving apps.
func (s *Store) Get(namespace, name string) *Pair {
	if sl := s.slot(key{namespace, name}); sl != nil {
		return sl.cur.Load()
	}
	return nil
}

// Len is the number of pairs in service.
func (s *Store) Len() int {
	n := 0
	if m := s.slots.Load(); m != nil {
		for _, sl := range *m {
			if sl.cur.Load() != nil {
				n++
			}
		}
	}
	return n
}

// authorize resolves the pair an app of appNamespace names. ref is "name"
// (the app's own namespace) or "namespace/name"; the namespace must be the
// app's. appNamespace is the Kubernetes namespace the engine knows the app
// belongs to (from the AppNamespace it attached to), never something the
// app claims. A reference to another namespace is refused without looking
// it up, so an app cannot probe which pairs exist elsewhere.
func authorize(appNamespace, ref string) (key, error) {
	if appNamespace == "" {
		return key{}, fmt.Errorf("certkeypair %q: app has no namespace: %w", ref, ErrForbidden)
	}
	ns, name := appNamespace, ref
	if i := strings.IndexByte(ref, '/'); i >= 0 {
		ns, name = ref[:i], ref[i+1:]
	}
	if ns != appNamespace {
		return key{}, fmt.Errorf("app namespace %q may not use certkeypair %s/%s: %w", appNamespace, ns, name, ErrForbidden)
	}
	if err := validName("certkeypair name", name); err != nil {
		return key{}, fmt.Errorf("app namespace %q: %v: %w", appNamespace, err, ErrNotFound)
	}
	return key{ns, name}, nil
}

// lookup returns the current pair of k, or an error wrapping ErrNotFound
// that says why (never stored, removed, or its material refused).
func (s *Store) lookup(appNamespace string, k key) (*Pair, error) {
	sl := s.slot(k)
	if sl != nil {
		if p := sl.cur.Load(); p != nil {
			return p, nil
		}
		if r := sl.rejected.Load(); r != nil {
			return nil, fmt.Errorf("app namespace %q: certkeypair %s is not usable (%s: %s): %w",
				appNamespace, k, r.Reason, r.Msg, ErrNotFound)
		}
	}
	return nil, fmt.Errorf("app namespace %q: certkeypair %s: %w", appNamespace, k, ErrNotFound)
}

// SetCA records the CA bundle that comes with pair namespace/name (the
// Secret's ca.crt: cert-manager puts the issuer's chain there). A connect
// that names the pair as its trust anchor verifies servers against it. An
// empty bundle forgets it.
func (s *Store) SetCA(namespace, name string, caPEM []byte) error {
	k := key{namespace, name}
	var pool *x509.CertPool
	if len(caPEM) > 0 {
		var err error
		if pool, err = parseCABundle("ca.crt of certkeypair "+k.String(), caPEM); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cas.Load()
	next := make(map[key]*x509.CertPool, 1)
	if old != nil {
		for kk, v := range *old {
			next[kk] = v
		}
	}
	if pool == nil {
		delete(next, k)
	} else {
		next[k] = pool
	}
	s.cas.Store(&next)
	return nil
}

// TrustPool returns the CA bundle of pair ref for an app of Kubernetes
// namespace appNamespace, authorized as ServerConfig authorizes pairs.
func (s *Store) TrustPool(appNamespace, ref string) (*x509.CertPool, error) {
	k, err := authorize(appNamespace, ref)
	if err != nil {
		return nil, err
	}
	if m := s.cas.Load(); m != nil {
		if p := (*m)[k]; p != nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("certkeypair %s has no CA bundle (ca.crt): %w", k, ErrNotFound)
}
