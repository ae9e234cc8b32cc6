// Package hostile holds the hostile-app acceptance suite of the session
// engine (its tests only): an engine, a good pair of apps moving
// hash-checked data through it, and a hostile app — each its own process —
// where the hostile app speaks the raw wire protocol on the real attach
// socket and attacks the engine's boundary one family at a time. The suite
// checks that the engine keeps serving, the good data arrives intact, the
// hostile app's sessions are reset, and the engine's goroutines, threads
// and descriptors return to where they were.
//
// Cross-process shared memory is invisible to the race detector
// (golang/go#16206): the tests build only without -race.
package hostile
