package session

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"time"

	enginetls "github.com/hoststack/hoststack/engine/tls"
	"github.com/hoststack/hoststack/engine/wire"
)

// maxTLSContexts bounds the TLS contexts one app may register.
const maxTLSContexts = 64

// localHandshakeTimeout bounds the handshake the engine runs for a TLS
// cut-through session.
const localHandshakeTimeout = 5 * time.Second

// tlsContext is an app's registered TLS parameters (wire.TLSContextAdd),
// checked against the store when registered: the app may use the pairs.
type tlsContext struct {
	pair, serverName, trust string
	server                  *tls.Config    // when pair is set: what listeners serve
	pool                    *x509.CertPool // trusted roots of connects; nil: system roots
}

// addTLSContext answers a TLSContextAdd (ns.mu held).
func (ns *namespace) addTLSContext(a *app, m *wire.TLSContextAdd) {
	reply := func(code wire.Code, format string, args ...any) {
		a.sendSock(&wire.TLSContextReply{Ctx: m.Ctx, Code: code, Msg: wire.Msgf(format, args...)}, nil)
	}
	store := ns.e.cfg.TLS
	switch {
	case store == nil:
		reply(wire.ErrInvalid, "this engine terminates no TLS (no CertKeyPair store)")
		return
	case len(a.tls) >= maxTLSContexts:
		reply(wire.ErrQuota, "app %s has %d TLS contexts, the most allowed", a.name, maxTLSContexts)
		return
	case m.CertKeyPair == "" && m.ServerName == "" && m.Trust == "":
		reply(wire.ErrInvalid, "an empty TLS context")
		return
	}
	c := &tlsContext{pair: m.CertKeyPair, serverName: m.ServerName, trust: m.Trust}
	// The CertKeyPairs an app may use are those of the Kubernetes namespace
	// of its app namespace; nothing the app says decides that.
	if c.pair != "" {
		cfg, err := store.ServerConfig(ns.cfg.Namespace, c.pair)
		if err != nil {
			reply(storeCode(err), "%v", err)
			return
		}
		c.server = cfg
	}
	if c.trust != "" {
		pool, err := store.TrustPool(ns.cfg.Namespace, c.trust)
		if err != nil {
			reply(storeCode(err), "%v", err)
			return
		}
		c.pool = pool
	}
	if a.tls == nil {
		a.tls = map[uint32]*tlsContext{}
	}
	a.nextTLS++
	a.tls[a.nextTLS] = c
	a.sendSock(&wire.TLSContextReply{Ctx: m.Ctx, Handle: a.nextTLS}, nil)
}

func storeCode(err error) wire.Code {
	if errors.Is(err, enginetls.ErrForbidden) {
		return wire.ErrDenied
	}
	return wire.ErrInvalid
}

// tlsServer is the server config of an app's TLS context for a listen.
func (a *app) tlsServer(h uint32) (*tls.Config, wire.Code, string) {
	if h == 0 {
		return nil, wire.OK, ""
	}
	c := a.tls[h]
	switch {
	case c == nil:
		return nil, wire.ErrInvalid, fmt.Sprintf("app %s has no TLS context %d", a.name, h)
	case c.server == nil:
		return nil, wire.ErrInvalid, "a TLS listener needs a context that names a CertKeyPair to serve"
	}
	return c.server, wire.OK, ""
}

// tlsClient is the client config of an app's TLS context for a connect to
// dst (the server name defaults to dst's address).
func (ns *namespace) tlsClient(a *app, h uint32, dst netip.AddrPort) (*tls.Config, wire.Code, string) {
	if h == 0 {
		return nil, wire.OK, ""
	}
	c := a.tls[h]
	if c == nil {
		return nil, wire.ErrInvalid, fmt.Sprintf("app %s has no TLS context %d", a.name, h)
	}
	name := c.serverName
	if name == "" {
		name = dst.Addr().String()
	}
	var opts []enginetls.Option
	if c.pool != nil {
		opts = append(opts, enginetls.RootPool(c.pool))
	}
	cfg, err := ns.e.cfg.TLS.ClientConfig(ns.cfg.Namespace, c.pair, name, opts...)
	if err != nil {
		return nil, storeCode(err), err.Error()
	}
	return cfg, wire.OK, ""
}

// localTLS decides a cut-through session between a connect with TLS client
// config client (nil: plaintext) and a listener serving server (nil:
// plaintext): both TLS runs the handshake a remote peer would (each side
// gets the acceptance or refusal it would get) and then cuts through
// without encrypting, since both ends are this engine; a mismatch is
// refused as a handshake would fail. Callers run it without ns.mu: a few
// milliseconds of CPU (up to localHandshakeTimeout), on TLS cut-through
// connects only.
func localTLS(client, server *tls.Config, app string) (wire.Code, string) {
	switch {
	case client == nil && server == nil:
		return wire.OK, ""
	case client == nil:
		return wire.ErrTLS, fmt.Sprintf("app %s listens with TLS; connect with a TLS context", app)
	case server == nil:
		return wire.ErrTLS, fmt.Sprintf("tls handshake failed: app %s does not listen with TLS", app)
	}
	ctx, cancel := context.WithTimeout(context.Background(), localHandshakeTimeout)
	defer cancel()
	if _, err := enginetls.LocalHandshake(ctx, client, server); err != nil {
		return wire.ErrTLS, err.Error()
	}
	return wire.OK, ""
}

// TLSClient is the TLS client config of a connect the transport carries
// (nil: plaintext): the transport runs the handshake before Connected and
// pumps plaintext between the fifos and the TLS connection.
func (f *Flow) TLSClient() *tls.Config { return f.tlsClient }

// TLS is the server config of a TLS listener (nil: plaintext): the
// transport runs the handshake before Accept.
func (tl *TransportListener) TLS() *tls.Config { return tl.tls }

// HandshakeError maps a failed handshake to the code and message the app is
// told.
func HandshakeError(err error) (wire.Code, string) {
	e := enginetls.Classify(err)
	switch e.Kind {
	case enginetls.KindTimeout:
		return wire.ErrTimeout, e.Msg
	case enginetls.KindClosed, enginetls.KindNetwork, enginetls.KindCanceled:
		return wire.ErrReset, e.Msg
	case enginetls.KindNoCertificate:
		return wire.ErrInternal, e.Msg
	}
	return wire.ErrTLS, e.Msg
}
