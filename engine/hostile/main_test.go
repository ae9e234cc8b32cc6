//go:build !race

package hostile

import (
	"fmt"
	"os"
	"testing"
)

// The processes of the suite are this test binary re-executed with
// HS_HOSTILE_ROLE naming what it is: the engine, the good server, the good
// client or the hostile app. They talk to the test over stdout lines and,
// for the engine, stdin commands.
const (
	envRole   = "HS_HOSTILE_ROLE"
	envSocket = "HS_HOSTILE_SOCKET" // the engine's attach socket
	envRunDir = "HS_HOSTILE_RUNDIR" // the engine's run directory
	envAttack = "HS_HOSTILE_ATTACK" // which attack the hostile app runs
	envServer = "HS_HOSTILE_SERVER" // the good server's port
	envSink   = "HS_HOSTILE_SINK"   // the test's kernel TCP sink port
	envLow    = "HS_HOSTILE_LOWPORT"
)

func TestMain(m *testing.M) {
	role := os.Getenv(envRole)
	if role == "" {
		os.Exit(m.Run())
	}
	var err error
	switch role {
	case "engine":
		err = runEngine()
	case "good-server":
		err = runGoodServer()
	case "good-client":
		err = runGoodClient()
	case "hostile":
		err = runHostile(os.Getenv(envAttack))
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
		fmt.Printf("error %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}
