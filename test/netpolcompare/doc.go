// Package netpolcompare checks hoststack's NetworkPolicy compiler
// (agent/netpol) against an implementation of the same semantics this
// project did not write: the matcher of Cyclonus
// (github.com/mattfenwick/cyclonus/pkg/matcher). It is a module of its own
// so Cyclonus and its dependencies stay out of the agent's.
package netpolcompare
