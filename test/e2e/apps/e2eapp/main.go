// Command e2eapp is the app the end-to-end tests run in pods. With -hoststack it
// attaches to the node's engine through the socket the pod webhook injected, and
// listens and dials through it; without, it uses plain kernel sockets (a pod that
// does not use hoststack, and a stock crypto/tls client). Either way it serves a
// small control API over kernel HTTP on -control, through which the test, on the
// node, makes it dial:
//
//	GET /dial?to=ADDR&bytes=N[&server-name=NAME&trust=PAIR]  send N random bytes, check the echo by SHA-256
//	GET /whoami?to=ADDR                                      read the line a whoami listener writes
//	GET /healthz                                             200 once every listener is up
//	GET /engine                                              how often the client lost its engine and attached again
//
// Every answer is JSON: {"ok":bool,"error":"...","bytes":N,"sha256":"...","local":"...","remote":"...","line":"...",
// "engineLost":N,"engineBack":N}.
// Listeners: an echo on -echo, a whoami (writes the peer's address and closes) on
// -whoami, and with -tls-pair a TLS echo on -tls (the engine terminates TLS with that
// CertKeyPair). The process exits non-zero when its hoststack listeners die, so the
// kubelet restarts it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hoststack/hoststack/client"
)

type result struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	Bytes  int    `json:"bytes,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Local  string `json:"local,omitempty"`
	Remote string `json:"remote,omitempty"`
	Line   string `json:"line,omitempty"`
	// What client.Options.OnEngine told the app (GET /engine).
	EngineLost int64 `json:"engineLost,omitempty"`
	EngineBack int64 `json:"engineBack,omitempty"`
}

type appServer struct {
	app     *client.App // nil: kernel sockets
	caFile  string      // kernel TLS dials trust this CA
	ready   atomic.Int32
	wantLns int32
	// OnEngine counts: the test checks the app was told of an agent restart.
	engineLost, engineBack atomic.Int64
}

func main() {
	useHS := flag.Bool("hoststack", false, "listen and dial through the hoststack engine ($HOSTSTACK_SOCKET)")
	name := flag.String("name", "e2eapp", "app name at attach")
	control := flag.String("control", ":9000", "control API address (kernel TCP)")
	echo := flag.String("echo", ":7000", "echo listener")
	whoami := flag.String("whoami", ":7001", "whoami listener (empty: none)")
	tlsAddr := flag.String("tls", ":8443", "TLS echo listener (with -tls-pair)")
	tlsPair := flag.String("tls-pair", "", "CertKeyPair of the TLS listener (hoststack)")
	caFile := flag.String("ca", "", "PEM CA trusted by kernel TLS dials")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix(*name + ": ")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s := &appServer{caFile: *caFile}
	if *useHS {
		actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		app, err := client.Attach(actx, client.Options{Name: *name, OnEngine: func(attached bool, err error) {
			if attached {
				s.engineBack.Add(1)
				log.Printf("engine back: attached again")
			} else {
				s.engineLost.Add(1)
				log.Printf("engine lost: %v", err)
			}
		}})
		cancel()
		if err != nil {
			log.Fatalf("attach: %v", err)
		}
		defer app.Close()
		s.app = app
		log.Printf("attached as app %d", app.ID())
	}
	died := make(chan error, 3)
	s.serve(ctx, *echo, "", echoConn, died)
	if *whoami != "" {
		s.serve(ctx, *whoami, "", whoamiConn, died)
	}
	if *tlsPair != "" {
		s.serve(ctx, *tlsAddr, *tlsPair, echoConn, died)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.ready.Load() < s.wantLns {
			http.Error(w, "listeners not up", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/engine", func(w http.ResponseWriter, _ *http.Request) {
		writeResult(w, result{OK: s.app != nil, EngineLost: s.engineLost.Load(), EngineBack: s.engineBack.Load()})
	})
	mux.HandleFunc("/dial", s.handleDial)
	mux.HandleFunc("/whoami", s.handleWhoami)
	srv := &http.Server{Addr: *control, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			died <- fmt.Errorf("control: %w", err)
		}
	}()
	select {
	case <-ctx.Done():
		_ = srv.Close()
	case err := <-died:
		log.Fatalf("exiting: %v", err)
	}
}

// serve starts a listener on addr, retrying while the engine is not ready for it yet
// (a CertKeyPair not loaded yet), and hands each connection to handle.
func (s *appServer) serve(ctx context.Context, addr, pair string, handle func(net.Conn), died chan<- error) {
	s.wantLns++
	go func() {
		var ln net.Listener
		var err error
		for attempt := 0; ; attempt++ {
			ln, err = s.listen(addr, pair)
			if err == nil || attempt >= 120 || ctx.Err() != nil {
				break
			}
			log.Printf("listen %s (pair %q): %v; retrying", addr, pair, err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		if err != nil {
			died <- fmt.Errorf("listen %s: %w", addr, err)
			return
		}
		log.Printf("listening on %s (tls pair %q)", ln.Addr(), pair)
		s.ready.Add(1)
		go func() { <-ctx.Done(); ln.Close() }()
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() == nil {
					died <- fmt.Errorf("accept on %s: %w", addr, err)
				}
				return
			}
			go handle(c)
		}
	}()
}

func (s *appServer) listen(addr, pair string) (net.Listener, error) {
	switch {
	case s.app == nil:
		return net.Listen("tcp", addr)
	case pair != "":
		return s.app.ListenTLS("tcp", addr, client.TLSConfig{CertKeyPair: pair})
	default:
		return s.app.Listen("tcp", addr)
	}
}

func echoConn(c net.Conn) {
	defer c.Close()
	n, err := io.Copy(c, c)
	log.Printf("echo %s -> %s: %d bytes (%v)", c.RemoteAddr(), c.LocalAddr(), n, err)
}

func whoamiConn(c net.Conn) {
	defer c.Close()
	fmt.Fprintf(c, "%s\n", c.RemoteAddr())
}

func (s *appServer) dial(ctx context.Context, to, serverName, trust string) (net.Conn, error) {
	if s.app != nil {
		if serverName != "" {
			return s.app.DialTLS(ctx, "tcp", to, client.TLSConfig{ServerName: serverName, Trust: trust})
		}
		return s.app.Dial(ctx, "tcp", to)
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", to)
	if err != nil || serverName == "" {
		return c, err
	}
	// A stock crypto/tls client.
	cfg := &tls.Config{ServerName: serverName}
	if s.caFile != "" {
		pem, err := os.ReadFile(s.caFile)
		if err != nil {
			c.Close()
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			c.Close()
			return nil, fmt.Errorf("no certificate in %s", s.caFile)
		}
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

func (s *appServer) handleDial(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, _ := strconv.Atoi(q.Get("bytes"))
	if n <= 0 {
		n = 1024
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	res := result{}
	defer func() { writeResult(w, res) }()
	c, err := s.dial(ctx, q.Get("to"), q.Get("server-name"), q.Get("trust"))
	if err != nil {
		res.Error = err.Error()
		return
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	res.Local, res.Remote = c.LocalAddr().String(), c.RemoteAddr().String()
	payload := make([]byte, n)
	_, _ = rand.Read(payload)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				err = cw.CloseWrite()
			}
		}
		werr <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil {
		res.Error = fmt.Sprintf("read after %d bytes: %v", got, err)
		return
	}
	if err := <-werr; err != nil {
		res.Error = fmt.Sprintf("write: %v", err)
		return
	}
	want := sha256.Sum256(payload)
	sum := h.Sum(nil)
	res.Bytes, res.SHA256 = int(got), hex.EncodeToString(sum)
	if int(got) != n || !bytes.Equal(sum, want[:]) {
		res.Error = fmt.Sprintf("echo differs: sent %d bytes (sha256 %x), got %d (sha256 %x)", n, want, got, sum)
		return
	}
	res.OK = true
}

func (s *appServer) handleWhoami(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	res := result{}
	defer func() { writeResult(w, res) }()
	c, err := s.dial(ctx, r.URL.Query().Get("to"), "", "")
	if err != nil {
		res.Error = err.Error()
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	res.Local, res.Remote = c.LocalAddr().String(), c.RemoteAddr().String()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		res.Error = fmt.Sprintf("reading: %v", err)
		return
	}
	res.Line = line[:len(line)-1]
	res.OK = true
}

func writeResult(w http.ResponseWriter, res result) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}
