// Package kernel is hoststack's kernel transport: sessions whose peer is not
// a local listener leave through kernel sockets opened inside the app's
// host's (pod's) network namespace, so the traffic is the pod's own — its
// source address, its NetworkPolicy. Listeners in global scope listen there
// too and accept from outside, and UDP sockets (the client's ListenPacket)
// are kernel UDP sockets there. The engine keeps the fifos; this package
// pumps bytes between them and the sockets, one goroutine per direction.
package kernel

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/netns"
	"github.com/hoststack/hoststack/engine/session"
	enginetls "github.com/hoststack/hoststack/engine/tls"
	"github.com/hoststack/hoststack/engine/transport/stream"
	"github.com/hoststack/hoststack/engine/wire"
)

// Defaults for zero Options fields.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultCloseTimeout   = 30 * time.Second
)

// Options configures a Transport.
type Options struct {
	// Netns returns the network namespace file (e.g. /var/run/netns/x or
	// /proc/<pid>/ns/net) of a host: the Host of a per-pod attach socket,
	// "" for the node. An empty path means the process's own namespace.
	// Nil: every host is the process's own namespace.
	Netns func(host string) (path string, err error)
	// Hosts says which host owns an address of this node (a pod's IP: its
	// Host); nil or ok=false: none, the address is outside.
	Hosts func(addr netip.Addr) (host string, ok bool)
	// HostAddrs returns the addresses of a host (a pod's IPs); nil or none:
	// cut-through sessions of its apps show the destination's address as
	// their local one.
	HostAddrs func(host string) []netip.Addr
	// ConnectTimeout bounds a TCP handshake.
	ConnectTimeout time.Duration
	// CloseTimeout bounds how long the data an app wrote before closing
	// may take to drain into the socket; the socket is then reset.
	CloseTimeout time.Duration
	// Logf logs what no app can be told (failed accepts); nil: silent.
	Logf func(format string, args ...any)
}

// Transport is the kernel transport. It implements session.Transport,
// session.StreamListener and session.PacketTransport.
type Transport struct {
	opts  Options
	stats struct {
		accepted, acceptRefused, dgramIn, dgramOut, dgramDropped atomic.Uint64
	}
	// pollers serve the plain TCP sessions (stream.Poller: no goroutine per
	// session), made with the first one; TLS sessions are pumped by
	// goroutines over crypto/tls
	pollOnce sync.Once
	pollers  []*stream.Poller
}

var (
	_ session.Transport       = (*Transport)(nil)
	_ session.HostAddresser   = (*Transport)(nil)
	_ session.StreamListener  = (*Transport)(nil)
	_ session.PacketTransport = (*Transport)(nil)
)

// New returns a kernel transport.
func New(opts Options) *Transport {
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.CloseTimeout <= 0 {
		opts.CloseTimeout = DefaultCloseTimeout
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	return &Transport{opts: opts}
}

// Stats are counters of the transport's own decisions.
type Stats struct {
	Accepted      uint64 // sessions accepted for global-scope listeners
	AcceptRefused uint64 // refused by the engine (rules, quotas): reset
	DgramIn       uint64 // datagrams handed to apps
	DgramOut      uint64 // datagrams sent for apps
	DgramDropped  uint64 // denied by a SessionRule, app not reading, malformed
}

// Stats returns the counters.
func (t *Transport) Stats() Stats {
	return Stats{Accepted: t.stats.accepted.Load(), AcceptRefused: t.stats.acceptRefused.Load(),
		DgramIn: t.stats.dgramIn.Load(), DgramOut: t.stats.dgramOut.Load(), DgramDropped: t.stats.dgramDropped.Load()}
}

// Name returns "kernel".
func (t *Transport) Name() string { return "kernel" }

// Host reports the host owning addr, as Options.Hosts says.
func (t *Transport) Host(_ string, addr netip.Addr) (string, bool) {
	if t.opts.Hosts == nil {
		return "", false
	}
	return t.opts.Hosts(addr.Unmap())
}

// HostAddr returns an address of host in like's family (Options.HostAddrs).
func (t *Transport) HostAddr(_, host string, like netip.Addr) (netip.Addr, bool) {
	if t.opts.HostAddrs == nil {
		return netip.Addr{}, false
	}
	for _, a := range t.opts.HostAddrs(host) {
		if a.Unmap().Is4() == like.Unmap().Is4() {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

func (t *Transport) netnsOf(host string) (string, error) {
	if t.opts.Netns == nil {
		return "", nil
	}
	return t.opts.Netns(host)
}

func hostName(host string) string {
	if host == "" {
		return "the node"
	}
	return "host " + host
}

// Connect starts a TCP connect in the background; it never blocks.
func (t *Transport) Connect(req session.ConnectRequest) (wire.Code, string) {
	if req.Flow == nil {
		return wire.ErrInternal, "kernel transport: connect without a flow (engine too old)"
	}
	if req.Remote.Proto != wire.TCP {
		return wire.ErrInvalid, "kernel transport: only tcp connects are supported"
	}
	if !req.Remote.IP.IsValid() || req.Remote.Port == 0 {
		return wire.ErrInvalid, "kernel transport: connect needs an address and a port"
	}
	go t.run(req)
	return wire.OK, ""
}

func (t *Transport) run(req session.ConnectRequest) {
	f := req.Flow
	dst := netip.AddrPortFrom(req.Remote.IP.Unmap(), req.Remote.Port)
	path, err := t.netnsOf(req.Host)
	if err != nil {
		f.Finish(wire.ErrNoTransport, fmt.Sprintf("kernel transport: no network namespace for app %s (%s): %v", req.App, hostName(req.Host), err))
		return
	}
	c, err := t.dial(path, dst, f.AppClosed())
	if err != nil {
		code := wire.ErrReset
		msg := fmt.Sprintf("kernel transport: connect to %s: %v", dst, err)
		switch {
		case errors.Is(err, unix.ECONNREFUSED):
			code = wire.ErrRefused
			msg = fmt.Sprintf("connection refused: nothing listens on %s (kernel transport, network namespace of app %s)", dst, req.App)
		case errors.Is(err, netns.ErrNetns):
			code = wire.ErrNoTransport
		case errors.Is(err, errConnectTimeout):
			code = wire.ErrTimeout
		}
		f.Finish(code, msg)
		return
	}
	var conn stream.Conn = c
	if cfg := f.TLSClient(); cfg != nil {
		tc := tls.Client(c, cfg)
		if err := enginetls.HandshakeUntil(tc, t.opts.ConnectTimeout, f.AppClosed()); err != nil {
			_ = c.SetLinger(0)
			c.Close()
			code, msg := session.HandshakeError(err)
			f.Finish(code, fmt.Sprintf("tls with %s: %s", dst, msg))
			return
		}
		conn = tc
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	if !f.Connected(local) {
		_ = c.SetLinger(0)
		c.Close()
		f.Finish(wire.ErrReset, "app went away")
		return
	}
	t.pump(f, conn, c, dst)
}

var errConnectTimeout = errors.New("connect timed out")

// socketIn creates a non-blocking TCP socket in the network namespace at
// path (the socket keeps it).
func socketIn(path string, domain int) (int, error) {
	fd := -1
	err := netns.Do(path, func() (err error) {
		fd, err = unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	return fd, err
}

// bindIn runs bind (a listen or a UDP socket, named by what) in the network
// namespace of host and maps its failure to the code and message the app
// is told.
func (t *Transport) bindIn(host, app, what string, bind func() error) (wire.Code, string) {
	path, err := t.netnsOf(host)
	if err != nil {
		return wire.ErrNoTransport, fmt.Sprintf("kernel transport: no network namespace for app %s (%s): %v", app, hostName(host), err)
	}
	if err := netns.Do(path, bind); err != nil {
		code := wire.ErrInternal
		if errors.Is(err, unix.EADDRINUSE) {
			code = wire.ErrAddrInUse
		} else if errors.Is(err, unix.EADDRNOTAVAIL) {
			code = wire.ErrInvalid
		}
		return code, fmt.Sprintf("kernel transport: %s in the network namespace of app %s: %v", what, app, err)
	}
	return wire.OK, ""
}

// Listen listens for a global-scope listener in the app's host's network
// namespace and hands every accepted connection to the engine.
func (t *Transport) Listen(req session.ListenRequest) (netip.AddrPort, wire.Code, string) {
	var ln *net.TCPListener
	code, msg := t.bindIn(req.Host, req.App, "listen on "+req.Local.String(), func() (err error) {
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(req.Local))
		return err
	})
	if code != wire.OK {
		return netip.AddrPort{}, code, msg
	}
	bound := ln.Addr().(*net.TCPAddr).AddrPort()
	go t.acceptLoop(req, ln)
	return netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port()), wire.OK, ""
}

func (t *Transport) acceptLoop(req session.ListenRequest, ln *net.TCPListener) {
	tl := req.Listener
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-tl.Closed():
		case <-stopped:
		}
		ln.Close()
	}()
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			select {
			case <-tl.Closed():
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: wait a little, as net/http does
			t.opts.Logf("kernel transport: accept for app %s on %s: %v", req.App, ln.Addr(), err)
			select {
			case <-tl.Closed():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		if cfg := tl.TLS(); cfg != nil {
			// the handshake first, off the accept loop: the app sees only
			// sessions whose peer completed it
			go func() {
				tc := tls.Server(c, cfg)
				if err := enginetls.HandshakeUntil(tc, t.opts.ConnectTimeout, tl.Closed()); err != nil {
					_ = c.SetLinger(0)
					c.Close()
					_, msg := session.HandshakeError(err)
					t.opts.Logf("kernel transport: tls from %s for app %s: %s", remote, req.App, msg)
					return
				}
				t.accept(req, tl, tc, c, local, remote)
			}()
			continue
		}
		t.accept(req, tl, c, c, local, remote)
	}
}

// accept hands an accepted connection to the app and pumps it.
func (t *Transport) accept(req session.ListenRequest, tl *session.TransportListener, conn stream.Conn, raw *net.TCPConn, local, remote netip.AddrPort) {
	f, code, msg := tl.Accept(local, remote)
	if code != wire.OK {
		t.stats.acceptRefused.Add(1)
		_ = raw.SetLinger(0)
		conn.Close()
		if code != wire.ErrDenied {
			t.opts.Logf("kernel transport: session from %s for app %s refused: %s", remote, req.App, msg)
		}
		return
	}
	t.stats.accepted.Add(1)
	go t.pump(f, conn, raw, remote)
}

// dial connects a socket of the namespace at path to dst without blocking a
// thread (Go's netpoller waits for the handshake).
func (t *Transport) dial(path string, dst netip.AddrPort, abort <-chan struct{}) (*net.TCPConn, error) {
	domain := unix.AF_INET
	var sa unix.Sockaddr
	if dst.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	} else {
		domain = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	fd, err := socketIn(path, domain)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, err
	}
	file := os.NewFile(uintptr(fd), "tcp:"+dst.String())
	defer file.Close()
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, err
	}
	_ = file.SetWriteDeadline(time.Now().Add(t.opts.ConnectTimeout))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-abort:
			_ = file.SetWriteDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		v, e := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case e != nil:
			cerr = e
		case v != 0:
			cerr = syscall.Errno(v)
		default:
			if _, e := unix.Getpeername(int(fd)); e == unix.ENOTCONN {
				return false // handshake still in progress
			}
		}
		return true
	})
	if werr != nil {
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			select {
			case <-abort:
				return nil, errors.New("the app gave up")
			default:
			}
			return nil, fmt.Errorf("%w: no answer within %v", errConnectTimeout, t.opts.ConnectTimeout)
		}
		return nil, werr
	}
	if cerr != nil {
		return nil, cerr
	}
	_ = file.SetWriteDeadline(time.Time{})
	c, err := net.FileConn(file)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, errors.New("not a tcp socket")
	}
	return tc, nil
}

// pump runs the session over conn (raw itself, or TLS over it) until it
// ends: a plain socket on a poller, TLS with stream.Pump.
func (t *Transport) pump(f *session.Flow, conn stream.Conn, raw *net.TCPConn, dst netip.AddrPort) {
	if conn == stream.Conn(raw) {
		if p := t.pollerForFlow(f.Affinity()); p != nil {
			if fd, err := detach(raw); err == nil {
				p.Add(f, fd, dst)
				return
			}
		}
	}
	stream.Pump(f, conn, dst, stream.Options{CloseTimeout: t.opts.CloseTimeout, Name: "kernel transport",
		Abort: func() { _ = raw.SetLinger(0) }})
}

// WatchBell has the poller of the app worker's flows watch its transport
// doorbell (session.BellWatcher).
func (t *Transport) WatchBell(_ string, affinity uint64, fd int, ring func()) func() {
	p := t.poller(affinity)
	if p == nil {
		return nil
	}
	unwatch, err := p.WatchBell(fd, ring)
	if err != nil {
		t.opts.Logf("kernel transport: %v (a goroutine reads the doorbell)", err)
		return nil
	}
	return unwatch
}

// pollerForFlow places a session: on the poller that watches its app
// worker's doorbell (a ring then reaches it without a hand-off) unless
// another serves fewer sessions (so one worker's streams still spread over
// the cores).
func (t *Transport) pollerForFlow(affinity uint64) *stream.Poller {
	best := t.poller(affinity)
	if best == nil {
		return nil
	}
	for _, p := range t.pollers {
		if p.Load() < best.Load() {
			best = p
		}
	}
	return best
}

// poller returns the poller (one of GOMAXPROCS) that watches the doorbell
// of the app worker named by affinity; nil if none could be made (sessions
// are then pumped by goroutines).
func (t *Transport) poller(affinity uint64) *stream.Poller {
	t.pollOnce.Do(func() {
		for range runtime.GOMAXPROCS(0) {
			p, err := stream.NewPoller("kernel transport", t.opts.CloseTimeout)
			if err != nil {
				t.opts.Logf("kernel transport: %v (sessions are pumped by goroutines)", err)
				break
			}
			t.pollers = append(t.pollers, p)
		}
	})
	if len(t.pollers) == 0 {
		return nil
	}
	// mixed: the apps' and workers' ids are small sequential numbers
	return t.pollers[(affinity*0x9e3779b97f4a7c15)>>32%uint64(len(t.pollers))]
}

// detach takes the socket out of c (and out of Go's netpoller): a duplicate
// of its descriptor, non-blocking like the original (they share the open
// file), which the caller owns; c is closed.
func detach(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) {
		fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, err
	}
	c.Close()
	return fd, nil
}
