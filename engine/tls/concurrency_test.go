/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// TestRotationDuringHandshakes rotates a pair (and churns other names of
// the store, which republishes its map) continuously while many handshakes
// run through one server config and one client config. Every handshake
// must succeed with one of the two certificates; run with -race.
func TestRotationDuringHandshakes(t *testing.T) {
	ca := newCA(t, "test-ca")
	v1, v2 := ca.issue(t, leafOpts{}), ca.issue(t, leafOpts{})
	bad := ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("team-a", "web", v1.certPEM, v1.keyPEM); err != nil {
		t.Fatal(err)
	}
	if err := s.Set("team-a", "client", v1.certPEM, v1.keyPEM); err != nil {
		t.Fatal(err)
	}
	scfg, err := s.ServerConfig("team-a", "web")
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := s.ClientConfig("team-a", "client", "svc.test", RootCAs(ca.pem))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)

	const workers, perWorker = 8, 12
	stop := make(chan struct{})
	var rotations atomic.Int64
	rotatorDone := make(chan struct{})
	go func() {
		defer close(rotatorDone)
		pairs := []*leaf{v1, v2}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := pairs[i%2]
			if err := s.Set("team-a", "web", p.certPEM, p.keyPEM); err != nil {
				t.Error(err)
				return
			}
			s.Set("team-a", "client", p.certPEM, p.keyPEM)
			// Refused material never replaces the good pair.
			if s.Set("team-a", "web", p.certPEM, bad.keyPEM) == nil {
				t.Error("mismatched pair accepted")
				return
			}
			other := fmt.Sprintf("other-%d", i%4)
			if i%3 == 0 {
				s.Remove("team-a", other)
			} else {
				s.Set("team-a", other, p.certPEM, p.keyPEM)
			}
			rotations.Add(1)
		}
	}()

	var (
		wg         sync.WaitGroup
		seen1      atomic.Int64
		seen2      atomic.Int64
		localOK    atomic.Int64
		handshakes atomic.Int64
	)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				if w == 0 && i%4 == 0 {
					// Cut-through handshakes share the same configs.
					if _, err := LocalHandshake(ctx, ccfg, scfg); err != nil {
						t.Errorf("local handshake: %v", err)
						return
					}
					localOK.Add(1)
					continue
				}
				pair := pipePair
				if w%2 == 0 {
					pair = tcpPair
				}
				cconn, sconn := pair(t)
				srv := serveEcho(ctx, sconn, scfg)
				c := tls.Client(cconn, stockClient(ca, "svc.test"))
				if err := Handshake(ctx, c); err != nil {
					t.Errorf("client handshake: %v", err)
					return
				}
				if err := <-srv.handshake; err != nil {
					t.Errorf("server handshake: %v", err)
					return
				}
				switch serial := peerSerial(c); {
				case serial.Cmp(v1.serial) == 0:
					seen1.Add(1)
				case serial.Cmp(v2.serial) == 0:
					seen2.Add(1)
				default:
					t.Errorf("served unknown serial %v", serial)
				}
				roundTrip(t, c, "x")
				c.Close()
				<-srv.done
				handshakes.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-rotatorDone
	t.Logf("%d handshakes (%d saw v1, %d saw v2), %d local, during %d rotations",
		handshakes.Load(), seen1.Load(), seen2.Load(), localOK.Load(), rotations.Load())
	if rotations.Load() == 0 || seen1.Load() == 0 || seen2.Load() == 0 {
		t.Error("handshakes did not overlap rotations: both certificates should have been served")
	}
}
