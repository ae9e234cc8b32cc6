/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package enginetls is the session engine's TLS termination: the engine
// speaks TLS on the wire with crypto/tls while the app reads and writes
// plaintext through its FIFOs. It holds the node's CertKeyPairs, decides
// which app may use which, builds crypto/tls configs from them, and runs
// handshakes with errors an app can be told. Like the rest of engine/ it
// imports nothing of Kubernetes.
//
// The directory is engine/tls but the package is named enginetls, so that
// callers can import crypto/tls under its own name next to it without an
// alias, and every config this package returns is a plain *tls.Config.
//
// # Store and rotation
//
// A Store maps (Kubernetes namespace, CertKeyPair name) to a validated
// Pair. Set checks the material with the controller's policy (see
// controllers/certkeypair_policy.go: size limits, leaf-first chain, key
// matches leaf, chain valid now; the same reason strings) and refuses bad
// material with a *MaterialError naming the pair, leaving the previous good
// pair in service. Replacing a pair swaps one atomic pointer: configs do not
// hold certificates, their GetCertificate/GetClientCertificate callbacks
// read the store at every handshake, so new handshakes see the new pair
// while sessions that completed their handshake carry on untouched. Reads
// take no lock. There is no watcher: the agent calls Set again when the
// Secret changes (SecretData), standalone mode when its files change
// (LoadFiles).
//
// # Authorization
//
// VPP's cert/key pairs are global and unowned; ours belong to a Kubernetes
// namespace, and only apps of that namespace may use them. ServerConfig and
// ClientConfig take the app's namespace — as the engine knows it from the
// attach, never as the app claims it — and a pair reference, "name" or
// "namespace/name". Another namespace's pair is refused with ErrForbidden
// without being looked up (an app cannot probe what exists elsewhere); a
// missing or unusable one with ErrNotFound.
//
// # Configs
//
// Both sides require TLS 1.2 and negotiate 1.3 when the peer can.
// Servers may require client certificates (ClientCAs). Clients must name
// the server (serverName) and verify it against the system roots or
// RootCAs; there is no option to skip verification.
//
// # Handshakes
//
// Handshake runs a handshake under a deadline and returns an *Error whose
// Kind picks the result code and whose Msg (short, at most MaxMessageLen)
// can be sent to the app; Classify does the same for later errors.
// LocalHandshake serves cut-through sessions: the engine runs both sides'
// handshakes against each other over a local socket pair, so both apps get the
// verification a network peer would give, and then steps out of the data
// path as cut-through always does.
package enginetls
