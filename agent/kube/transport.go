package kube

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/hoststack/hoststack/agent/cni"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/kernel"
)

// newTransport builds the engine's transport from the options. A pod (its
// UID is the host of its attach socket) reaches the outside world from its
// own network namespace, which the CNI plugin reported; the node's host ("")
// is the agent's own namespace.
func newTransport(o Options, reg *cni.Registry, log *slog.Logger) (session.Transport, error) {
	switch o.Transport {
	case TransportNone:
		return nil, nil
	case "", TransportKernel:
	default:
		return nil, fmt.Errorf("unknown transport %q (want %s or %s)", o.Transport, TransportKernel, TransportNone)
	}
	return kernel.New(kernel.Options{
		ConnectTimeout: o.ConnectTimeout,
		Netns:          podNetns(reg),
		Hosts: func(ip netip.Addr) (string, bool) {
			if reg == nil {
				return "", false
			}
			return reg.PodOfIP(ip)
		},
		HostAddrs: func(host string) []netip.Addr {
			if reg == nil {
				return nil
			}
			return podIPs(reg, host)
		},
		Logf: func(f string, args ...any) { log.Info(fmt.Sprintf(f, args...), "component", "kernel-transport") },
	}), nil
}

// podNetns resolves a host to its network namespace file.
func podNetns(reg *cni.Registry) func(host string) (string, error) {
	return func(host string) (string, error) {
		if host == "" {
			return "", nil
		}
		if reg == nil {
			return "", errors.New("the agent runs without its CNI server (--cni=false), so it knows no pod's network namespace")
		}
		a, ok := reg.Lookup(host)
		if !ok || a.Netns == "" {
			return "", fmt.Errorf("no CNI ADD was seen for pod uid %s: is the hoststack-cni plugin chained into the node's CNI config?", host)
		}
		return a.Netns, nil
	}
}

// transportType is the SessionNode's name for the configured transport.
func (a *Agent) transportType() hsv1.TransportType {
	if a.o.Transport == TransportNone {
		return ""
	}
	return hsv1.TransportKernel
}

// podIPs are the addresses the CNI plugin reported for a pod.
func podIPs(reg *cni.Registry, uid string) []netip.Addr {
	a, ok := reg.Lookup(uid)
	if !ok {
		return nil
	}
	var ips []netip.Addr
	for _, c := range a.IPs {
		if p, err := netip.ParsePrefix(c.Address); err == nil {
			ips = append(ips, p.Addr())
		}
	}
	return ips
}
