/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// DefaultHandshakeTimeout bounds a handshake whose context has no
// deadline: a peer that opens a connection and never speaks must not hold
// engine resources forever.
const DefaultHandshakeTimeout = 10 * time.Second

// MaxMessageLen is the longest Error.Msg; it equals the wire protocol's
// limit on error text sent to apps (engine/wire.MaxMessageLen).
const MaxMessageLen = 128

// Kind classifies a TLS failure for the engine: which result code the app
// gets, and whether it is the peer's or our side's doing.
type Kind int

const (
	// KindTimeout: the context deadline passed, or the connection's.
	KindTimeout Kind = iota + 1
	// KindCanceled: the context was canceled (app gave up, engine shutdown).
	KindCanceled
	// KindBadCertificate: we refused the peer's certificate (unknown
	// authority, wrong name, expired, missing when required).
	KindBadCertificate
	// KindPeerRejected: the peer aborted with a TLS alert, e.g. it refused
	// our certificate.
	KindPeerRejected
	// KindProtocol: no common version, cipher suite or ALPN protocol, or
	// the peer is not speaking TLS.
	KindProtocol
	// KindNoCertificate: our CertKeyPair is gone (removed or unusable).
	KindNoCertificate
	// KindClosed: the peer closed or reset the connection mid-handshake.
	KindClosed
	// KindNetwork: any other I/O failure.
	KindNetwork
)

var kindNames = [...]string{
	KindTimeout: "timeout", KindCanceled: "canceled", KindBadCertificate: "bad peer certificate",
	KindPeerRejected: "rejected by peer", KindProtocol: "protocol mismatch",
	KindNoCertificate: "certificate unavailable", KindClosed: "closed by peer", KindNetwork: "network error",
}

func (k Kind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is a classified TLS failure. Msg is short (at most MaxMessageLen
// bytes), says what happened from the app's point of view, and is safe to
// send to the app whose session it is; Err is the full cause, for logs.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Msg + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Handshake runs conn's handshake under ctx (DefaultHandshakeTimeout if
// ctx has no deadline) and returns nil or an *Error. When ctx ends first,
// crypto/tls closes the underlying connection.
func Handshake(ctx context.Context, conn *tls.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultHandshakeTimeout)
		defer cancel()
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return Classify(err)
	}
	return nil
}

// Classify turns an error of a TLS connection into an *Error (nil stays
// nil, an *Error is returned as is). Handshake uses it; the engine should
// also use it on the first Read error of a client session, because with
// TLS 1.3 a server that refuses the client's certificate says so only
// after the client's handshake has completed.
func Classify(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	kind, msg := classify(err)
	return &Error{Kind: kind, Msg: clip(msg), Err: err}
}

func classify(err error) (Kind, string) {
	var (
		unavailable *errUnavailable
		verify      *tls.CertificateVerificationError
		unknownCA   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalid     x509.CertificateInvalidError
		record      tls.RecordHeaderError
		opErr       *net.OpError
		netErr      net.Error
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout, "tls: handshake timed out"
	case errors.Is(err, context.Canceled):
		return KindCanceled, "tls: handshake canceled"
	case errors.As(err, &unavailable):
		return KindNoCertificate, fmt.Sprintf("tls: certkeypair %s is not available", unavailable.pair)
	case errors.As(err, &unknownCA):
		return KindBadCertificate, "tls: peer certificate signed by unknown authority"
	case errors.As(err, &hostname):
		return KindBadCertificate, fmt.Sprintf("tls: peer certificate is not valid for %q", hostname.Host)
	case errors.As(err, &invalid):
		return KindBadCertificate, "tls: peer certificate invalid: " + certInvalidReason(invalid)
	case errors.As(err, &verify):
		return KindBadCertificate, "tls: peer certificate rejected: " + trimTLS(verify.Err.Error())
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// A received alert: crypto/tls wraps its unexported alert type in
		// an OpError with this Op; the alert's text is stable and short.
		return KindPeerRejected, "tls: peer aborted the handshake: " + trimTLS(opErr.Err.Error())
	case errors.As(err, &record):
		return KindProtocol, "tls: peer is not speaking TLS"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.ErrClosedPipe):
		return KindClosed, "tls: connection closed by peer"
	case errors.Is(err, net.ErrClosed):
		return KindClosed, "tls: connection closed"
	case errors.As(err, &netErr) && netErr.Timeout():
		return KindTimeout, "tls: handshake timed out"
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "didn't provide a certificate"):
		// crypto/tls server, client auth required and none sent; the
		// error is a plain string.
		return KindBadCertificate, "tls: peer sent no certificate"
	case strings.HasPrefix(s, "tls: "):
		// The remaining crypto/tls errors are negotiation failures
		// (versions, cipher suites, curves, ALPN); their text is already
		// short and names what did not match.
		return KindProtocol, s
	}
	return KindNetwork, "tls: connection failed: " + s
}

func certInvalidReason(e x509.CertificateInvalidError) string {
	switch e.Reason {
	case x509.Expired:
		return "expired or not yet valid"
	case x509.NotAuthorizedToSign:
		return "signed by a certificate that is not a CA"
	case x509.IncompatibleUsage:
		return "not valid for this use (extended key usage)"
	case x509.CANotAuthorizedForThisName:
		return "issuer not allowed to sign for this name"
	}
	return trimTLS(e.Error())
}

func trimTLS(s string) string { return strings.TrimPrefix(s, "tls: ") }

// clip makes s valid UTF-8 (parts of some messages come from the peer's
// certificate) and shortens it to MaxMessageLen bytes on a rune boundary.
func clip(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= MaxMessageLen {
		return s
	}
	s = s[:MaxMessageLen-3]
	for !utf8.ValidString(s) { // cut inside a rune: drop its leading bytes
		s = s[:len(s)-1]
	}
	return s + "..."
}

// LocalResult is what each side of a LocalHandshake learned, as a network
// handshake would have told it (peer certificates, ALPN, version).
type LocalResult struct {
	Client, Server tls.ConnectionState
}

// LocalHandshake is TLS for a cut-through session, where both apps are on
// this node and the engine is both the connecting app's TLS client and the
// listening app's TLS server. It runs the two handshakes against each other
// over an in-kernel unix socket pair and returns their outcome; after
// success the engine connects the apps' FIFOs directly and no byte is ever
// encrypted.
//
// Why only the handshake: it is what carries the security decisions
// (the client verifies the server's certificate and name, the server
// verifies the client's certificate against its ClientCAs, ALPN is
// negotiated), so each app gets exactly the acceptance or refusal a remote
// peer would give. Encrypting the data afterwards would buy nothing — the
// engine would encrypt and decrypt in the same process, with the
// plaintext in its memory on both sides — and it would put the engine
// back in the data path that cut-through exists to leave.
//
// Why a socket pair and not net.Pipe: net.Pipe is unbuffered, and TLS has
// moments where both sides write at once (an alert sent while the peer is
// still writing its flight, a TLS 1.3 server refusing a client certificate
// after the client finished); on net.Pipe those deadlock until the
// timeout. A socket buffers far more than a handshake flight.
//
// The server config is used with session tickets disabled, since nothing
// can resume these sessions. On failure the error is an *Error from the
// side that decided (a refusal beats the "peer aborted" the other side
// sees); a server-side one says "server side", and "peer" in it means the
// client.
func LocalHandshake(ctx context.Context, client, server *tls.Config) (LocalResult, error) {
	scfg := server.Clone()
	scfg.SessionTicketsDisabled = true
	ccfg := client.Clone()
	ccfg.ClientSessionCache = nil

	cp, sp, err := socketPair()
	if err != nil {
		return LocalResult{}, &Error{Kind: KindNetwork, Msg: "tls: local handshake: " + err.Error(), Err: err}
	}
	// Closing the raw sockets, not the tls.Conns: tls.Conn.Close would
	// send close_notify, which nobody reads.
	defer cp.Close()
	defer sp.Close()
	cc, sc := tls.Client(cp, ccfg), tls.Server(sp, scfg)

	serr := make(chan error, 1)
	go func() {
		err := Handshake(ctx, sc)
		if err != nil {
			// The alert, if any, is already written; closing our end
			// turns a client still waiting for our flight into EOF.
			sp.Close()
		}
		serr <- err
	}()
	cerr := Handshake(ctx, cc)
	if cerr != nil {
		cp.Close()
	}
	se := <-serr
	if cerr == nil && se == nil {
		return LocalResult{Client: cc.ConnectionState(), Server: sc.ConnectionState()}, nil
	}
	return LocalResult{}, pickLocalError(Classify(cerr), Classify(se))
}

// socketPair returns the two ends of a connected AF_UNIX stream socket
// pair, as net.Conns (so deadlines and Close interrupting a blocked Read
// work through the netpoller).
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	a, err := fileConn(fds[0], "tls-local-client")
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	b, err := fileConn(fds[1], "tls-local-server")
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// fileConn wraps fd in a net.Conn and closes fd (net.FileConn dups it).
func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	return c, nil
}

// pickLocalError chooses which of the two sides' errors explains a failed
// local handshake: the one that decided, not the echo of it on the other
// side (an alert received, or the connection closed under it).
func pickLocalError(c, s *Error) *Error {
	echo := func(e *Error) bool { return e.Kind == KindPeerRejected || e.Kind == KindClosed }
	fromServer := func(e *Error) *Error {
		return &Error{Kind: e.Kind, Msg: clip("tls: server side: " + trimTLS(e.Msg)), Err: e.Err}
	}
	switch {
	case s == nil:
		return c
	case c == nil:
		return fromServer(s)
	case echo(c) && !echo(s):
		return fromServer(s)
	}
	return c
}

// HandshakeUntil is Handshake bounded by timeout and abandoned when abort
// closes (the app that asked went away, the listener closed).
func HandshakeUntil(conn *tls.Conn, timeout time.Duration, abort <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-abort:
			cancel()
		case <-ctx.Done():
		}
	}()
	return Handshake(ctx, conn)
}
