/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"time"

	enginetls "github.com/hoststack/hoststack/engine/tls"
)

// The agent keeps the store current; the engine builds a config when an app
// listens with TLS and runs each accepted connection's handshake with a
// deadline, telling the app (or its log) the short reason on failure.
func Example() {
	var store enginetls.Store

	// Agent: on every change of the Secret a CertKeyPair references.
	secretData := map[string][]byte{} // secret.Data
	if certPEM, keyPEM, err := enginetls.SecretData(secretData); err == nil {
		if err := store.Set("team-a", "web", certPEM, keyPEM); err != nil {
			log.Printf("keeping the previous pair: %v", err) // also: SessionNode status
		}
	}

	// Engine: an app of Kubernetes namespace team-a listens with TLS and
	// names CertKeyPair "web".
	// errors.Is(err, ErrForbidden / ErrNotFound) picks the reply code.
	cfg, err := store.ServerConfig("team-a", "web")
	if err != nil {
		log.Printf("listen refused: %v", err)
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	defer ln.Close()
	serve := func(raw net.Conn) {
		conn := tls.Server(raw, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := enginetls.Handshake(ctx, conn); err != nil {
			var e *enginetls.Error
			errors.As(err, &e)
			log.Printf("handshake (%s): %s", e.Kind, e.Msg) // e.Err has the detail
			raw.Close()
			return
		}
		// conn now carries the session's bytes to and from the app's FIFOs.
	}
	_ = serve
}
