// Command hoststack-cni is hoststack's chained CNI plugin. It changes no
// networking: it tells the node agent (hoststack-agent) which pod got which
// network namespace, interfaces and IPs, so the agent can later open
// sockets inside the pod's namespace and match the pod in session rules.
// The agent installs it (binary into the CNI bin dir, an entry at the end
// of the primary conflist's "plugins") and removes the entry on uninstall.
//
// Spec versions 0.4.0, 1.0.0 and 1.1.0. Configuration keys besides the
// standard ones (all optional):
//
//	agentSocket  the agent's unix socket (default /run/hoststack/cni.sock)
//	pendingDir   where DELs the agent could not take are queued
//	             (default /var/lib/hoststack/cni-pending)
//
// Example entry, after the main plugin in a conflist:
//
//	{"type": "hoststack-cni", "agentSocket": "/run/hoststack/cni.sock"}
//
// Commands:
//
//   - ADD: prevResult is required (the plugin only makes sense chained).
//     The container ID, ifname, netns path, the pod's namespace, name and
//     UID (K8S_POD_* in CNI_ARGS) and prevResult's interfaces and IPs go to
//     the agent; its refusal, or the agent being unreachable (code 11, try
//     again later), fails the ADD. On success prevResult is printed back
//     unchanged: byte for byte when it carries the configuration's
//     cniVersion, else converted to that version by the CNI library.
//   - CHECK: prevResult is required; the agent must know the attachment.
//   - DEL never fails: when the agent cannot be reached within 2 s, or
//     refuses, the DEL is written to pendingDir (<containerID>:<ifname>.json,
//     through a temporary file and a rename) and the agent applies it when
//     it starts.
//   - STATUS (1.1.0): the agent's answer; unreachable is code 50, "plugin
//     not available".
//   - GC (1.1.0): the runtime's cni.dev/valid-attachments go to the agent,
//     which forgets this network's other attachments.
//
// The protocol with the agent is package
// github.com/hoststack/hoststack/agent/cni.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	hcni "github.com/hoststack/hoststack/agent/cni"
)

const (
	callTimeout = 10 * time.Second
	delTimeout  = 2 * time.Second
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Check:  cmdCheck,
		Del:    cmdDel,
		Status: cmdStatus,
		GC:     cmdGC,
	}, version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "hoststack-cni: tells the hoststack node agent about pod network attachments")
}

type netConf struct {
	types.PluginConf
	AgentSocket string `json:"agentSocket,omitempty"`
	PendingDir  string `json:"pendingDir,omitempty"`
}

func parseConf(stdin []byte, needPrev bool) (*netConf, error) {
	conf := &netConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "hoststack-cni: cannot parse network configuration", err.Error())
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = hcni.DefaultSocket
	}
	if conf.PendingDir == "" {
		conf.PendingDir = hcni.DefaultPendingDir
	}
	if !needPrev {
		return conf, nil
	}
	if conf.RawPrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "hoststack-cni: no prevResult: it is a chained plugin and must follow the plugin that sets up the pod's interface in a conflist", "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "hoststack-cni: cannot parse prevResult", err.Error())
	}
	return conf, nil
}

// podArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K=V;K=V"), ignoring every other key.
func podArgs(args string) hcni.PodRef {
	var p hcni.PodRef
	for _, kv := range strings.Split(args, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	return p
}

func baseRequest(args *skel.CmdArgs, conf *netConf) *hcni.Request {
	return &hcni.Request{
		AttachmentKey: hcni.AttachmentKey{ContainerID: args.ContainerID, IfName: args.IfName},
		Network:       conf.Name,
		CNIVersion:    conf.CNIVersion,
		Netns:         args.Netns,
		Pod:           podArgs(args.Args),
	}
}

// withResult adds prevResult's interfaces and IPs to req.
func withResult(req *hcni.Request, prev types.Result) error {
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "hoststack-cni: cannot read prevResult", err.Error())
	}
	for _, itf := range res.Interfaces {
		if itf != nil {
			req.Interfaces = append(req.Interfaces, hcni.Interface{Name: itf.Name, Mac: itf.Mac, Sandbox: itf.Sandbox})
		}
	}
	for _, ip := range res.IPs {
		if ip == nil {
			continue
		}
		c := hcni.IPConfig{Address: ip.Address.String(), Interface: ip.Interface}
		if ip.Gateway != nil {
			c.Gateway = ip.Gateway.String()
		}
		req.IPs = append(req.IPs, c)
	}
	return nil
}

// call sends req and turns failures into CNI errors: the agent's own, or
// unreachableCode when it could not be reached.
func call(socket, path string, req *hcni.Request, timeout time.Duration, unreachableCode uint, unreachableMsg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := hcni.NewClient(socket, timeout).Do(ctx, path, req)
	var eb *hcni.ErrorBody
	switch {
	case err == nil:
		return nil
	case errors.As(err, &eb):
		return types.NewError(eb.Code, eb.Msg, eb.Details)
	default:
		return types.NewError(unreachableCode, unreachableMsg, err.Error())
	}
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, true)
	if err != nil {
		return err
	}
	req := baseRequest(args, conf)
	if err := withResult(req, conf.PrevResult); err != nil {
		return err
	}
	if err := call(conf.AgentSocket, hcni.PathAdd, req, callTimeout, types.ErrTryAgainLater, "hoststack-cni: agent unreachable"); err != nil {
		return err
	}
	return printPrev(args.StdinData, conf)
}

// printPrev prints prevResult as the ADD's result. When it already is in
// the configuration's version it is printed byte for byte, so keys the CNI
// library does not know survive; otherwise the library converts it.
func printPrev(stdin []byte, conf *netConf) error {
	var raw struct {
		Prev json.RawMessage `json:"prevResult"`
	}
	var ver struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(stdin, &raw) == nil && json.Unmarshal(raw.Prev, &ver) == nil && ver.CNIVersion == conf.CNIVersion {
		if _, err := os.Stdout.Write(append(raw.Prev, '\n')); err != nil {
			return types.NewError(types.ErrIOFailure, "hoststack-cni: cannot print the result", err.Error())
		}
		return nil
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, true)
	if err != nil {
		return err
	}
	req := baseRequest(args, conf)
	if err := withResult(req, conf.PrevResult); err != nil {
		return err
	}
	return call(conf.AgentSocket, hcni.PathCheck, req, callTimeout, types.ErrTryAgainLater, "hoststack-cni: agent unreachable")
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, false)
	if err != nil {
		// Still a DEL: queue it with the defaults rather than fail.
		conf = &netConf{AgentSocket: hcni.DefaultSocket, PendingDir: hcni.DefaultPendingDir}
	}
	req := baseRequest(args, conf)
	err = call(conf.AgentSocket, hcni.PathDel, req, delTimeout, types.ErrTryAgainLater, "hoststack-cni: agent unreachable")
	if err == nil {
		return nil
	}
	if qerr := queueDel(conf.PendingDir, req); qerr != nil {
		fmt.Fprintf(os.Stderr, "hoststack-cni: DEL %s: agent: %v; queueing failed too: %v\n", req.AttachmentKey, err, qerr)
		return nil
	}
	fmt.Fprintf(os.Stderr, "hoststack-cni: DEL %s queued in %s: agent: %v\n", req.AttachmentKey, conf.PendingDir, err)
	return nil
}

// queueDel writes req into dir atomically: a temporary dot-file, then a
// rename to its final name, so the agent never reads half a file.
func queueDel(dir string, req *hcni.Request) error {
	req.QueuedAt = time.Now().UTC()
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".queue-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // fails harmlessly after the rename
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, hcni.PendingFileName(req.AttachmentKey)))
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	return call(conf.AgentSocket, hcni.PathStatus, nil, callTimeout, types.ErrPluginNotAvailable, "plugin not available")
}

func cmdGC(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	if conf.ValidAttachments == nil {
		// An empty list is a valid answer (nothing is left); no list at
		// all is a broken runtime, and would wipe the network's pods.
		return types.NewError(types.ErrInvalidNetworkConfig, "hoststack-cni: GC without cni.dev/valid-attachments", "")
	}
	req := &hcni.Request{Network: conf.Name, CNIVersion: conf.CNIVersion}
	for _, a := range conf.ValidAttachments {
		req.ValidAttachments = append(req.ValidAttachments, hcni.AttachmentKey{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return call(conf.AgentSocket, hcni.PathGC, req, callTimeout, types.ErrTryAgainLater, "hoststack-cni: agent unreachable")
}
