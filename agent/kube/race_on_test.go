//go:build race

package kube

// raceEnabled: the test binary runs with the race detector, so the agent
// binary under test is built with it too.
const raceEnabled = true
