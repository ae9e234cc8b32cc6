// Command engine runs a session engine with one app namespace, for trying
// the echo example without the node agent:
//
//	go run ./examples/echo/engine -run-dir /tmp/hs &
//	HOSTSTACK_SOCKET=/tmp/hs/demo_default.sock go run ./examples/echo/server &
//	HOSTSTACK_SOCKET=/tmp/hs/demo_default.sock go run ./examples/echo/client hello
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hoststack/hoststack/engine/session"
)

func main() {
	runDir := flag.String("run-dir", "/tmp/hoststack", "directory for the attach socket")
	ns := flag.String("namespace", "demo", "namespace of the app namespace")
	name := flag.String("name", "default", "name of the app namespace")
	secret := flag.String("secret", "", "app namespace secret (optional)")
	stats := flag.Duration("stats", 0, "print stats at this interval (0: never)")
	flag.Parse()

	e, err := session.New(session.Config{RunDir: *runDir})
	if err != nil {
		log.Fatal(err)
	}
	path, err := e.AddNamespace(session.NamespaceConfig{Namespace: *ns, Name: *name, Secret: *secret})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("engine serving app namespace %s/%s on %s", *ns, *name, path)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	var tick <-chan time.Time
	if *stats > 0 {
		tick = time.Tick(*stats)
	}
	for {
		select {
		case <-sig:
			e.Close()
			return
		case <-tick:
			for _, st := range e.Stats() {
				log.Printf("%+v", st)
			}
		}
	}
}
