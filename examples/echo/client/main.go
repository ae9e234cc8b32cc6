// Command client is the echo client of the hoststack example: it attaches,
// dials the echo server, sends a message (or -bytes of random data, checked
// by hash), half-closes, and prints what came back.
//
//	HOSTSTACK_SOCKET=/run/hoststack/default/echo/session.sock client -to 127.0.0.1:7000 -msg hello
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"

	"github.com/hoststack/hoststack/client"
)

func main() {
	socket := flag.String("socket", os.Getenv(client.EnvSocket), "engine attach socket (default $HOSTSTACK_SOCKET)")
	to := flag.String("to", "127.0.0.1:7000", "echo server address")
	msg := flag.String("msg", "hello through shared memory", "message to send")
	size := flag.Int("bytes", 0, "send this many random bytes instead of -msg, and verify the echo by SHA-256")
	kernel := flag.Bool("kernel", false, "dial with a plain kernel socket instead of hoststack (a client outside the cluster)")
	serverName := flag.String("tls-server-name", "", "speak TLS and verify the server as this name (with hoststack the engine speaks it)")
	trust := flag.String("tls-trust", "", "hoststack: the CertKeyPair whose ca.crt is trusted (default: system roots)")
	caFile := flag.String("tls-ca", "", "-kernel: PEM file of the CA to trust (default: system roots)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("echo-client: ")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var c net.Conn
	var err error
	if *kernel {
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", *to)
		if err == nil && *serverName != "" {
			cfg := &tls.Config{ServerName: *serverName}
			if *caFile != "" {
				pem, rerr := os.ReadFile(*caFile)
				if rerr != nil {
					log.Fatalf("reading -tls-ca: %v", rerr)
				}
				cfg.RootCAs = x509.NewCertPool()
				cfg.RootCAs.AppendCertsFromPEM(pem)
			}
			tc := tls.Client(c, cfg)
			if err = tc.HandshakeContext(ctx); err == nil {
				st := tc.ConnectionState()
				fmt.Printf("tls %s with %s\n", tls.VersionName(st.Version), st.PeerCertificates[0].Subject.CommonName)
			}
			c = tc
		}
	} else {
		var app *client.App
		app, err = client.Attach(ctx, client.Options{Socket: *socket, Name: "echo-client"})
		if err != nil {
			log.Fatalf("attach: %v", err)
		}
		defer app.Close()
		if *serverName != "" {
			c, err = app.DialTLS(ctx, "tcp", *to, client.TLSConfig{ServerName: *serverName, Trust: *trust})
		} else {
			c, err = app.Dial(ctx, "tcp", *to)
		}
	}
	if err != nil {
		log.Fatalf("dial: %v", err)
	}
	defer c.Close()

	payload := []byte(*msg)
	if *size > 0 {
		payload = make([]byte, *size)
		rand.Read(payload)
	}
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		log.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		log.Fatalf("write: %v", err)
	}
	el := time.Since(start)
	if !bytes.Equal(got, payload) {
		log.Fatalf("echo differs: sent %d bytes (sha256 %x), got %d (sha256 %x)",
			len(payload), sha256.Sum256(payload), len(got), sha256.Sum256(got))
	}
	if *size > 0 {
		fmt.Printf("echoed %d bytes intact (sha256 %x) in %v, %s -> %s\n",
			len(got), sha256.Sum256(got), el.Round(time.Microsecond), c.LocalAddr(), c.RemoteAddr())
		return
	}
	fmt.Printf("%s -> %s: sent %q, got %q back in %v\n", c.LocalAddr(), c.RemoteAddr(), payload, got, el.Round(time.Microsecond))
}
