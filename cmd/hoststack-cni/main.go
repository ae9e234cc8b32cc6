// Command hoststack-cni is hoststack's chained CNI plugin. It changes no
// networking: it tells the node agent (hoststack-agent) which pod got which
// network namespace, interfaces and IPs, so the agent can later open
// sockets inside the pod's namespace and match the pod in session rules.
// The agent installs it (binary into the CNI bin dir, an entry at the end
// of the primary conflist's "plugins") and removes the entry on uninstall.
//
// Spec versions 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0 (CHECK from 0.4.0,
// STATUS and GC from 1.1.0, as the spec has them). Configuration keys
// besides the standard ones (all optional):
//
//	agentSocket  the agent's unix socket (default /run/hoststack/cni.sock)
//	pendingDir   where ADDs and DELs the agent did not take are queued
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
//     the agent. ADD never fails because of the agent: when it cannot be
//     reached within 5 s or refuses, the ADD is queued in pendingDir
//     (<containerID>:<ifname>.add.json) for the agent to apply when it
//     is back, so an agent outage never stops pods from starting. The
//     result is prevResult unchanged: byte for byte when it carries the
//     configuration's cniVersion, else converted to that version by the
//     CNI library.
//   - CHECK: prevResult is required; the agent must know the attachment.
//   - DEL never fails: when the agent cannot be reached within 2 s, or
//     refuses, the DEL is queued in pendingDir (<containerID>:<ifname>.json).
//     Queued files are written through a temporary file and a rename; the
//     agent applies them oldest first when it starts and while it runs.
//   - STATUS: the plugin's own readiness, not the agent's: its
//     configuration parses and pendingDir is writable, which is all ADD
//     needs. Otherwise code 50, "plugin not available".
//   - GC: the runtime's cni.dev/valid-attachments go to the agent, which
//     forgets this network's other attachments.
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
	"golang.org/x/sys/unix"

	hcni "github.com/hoststack/hoststack/agent/cni"
	hsversion "github.com/hoststack/hoststack/internal/version"
)

const (
	callTimeout = 10 * time.Second
	addTimeout  = 5 * time.Second
	delTimeout  = 2 * time.Second
)

func main() {
	// Runtimes call plugins with CNI_COMMAND and no arguments; --version is
	// for people checking what is installed on a node.
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println(hsversion.Version)
		return
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Check:  cmdCheck,
		Del:    cmdDel,
		Status: cmdStatus,
		GC:     cmdGC,
	}, version.PluginSupports(hcni.SpecVersions...), "hoststack-cni "+hsversion.Version+": tells the hoststack node agent about pod network attachments")
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
	// The pod starts whatever the agent says: hoststack must never stop
	// the node's pods, most of which do not use it.
	if err := call(conf.AgentSocket, hcni.PathAdd, req, addTimeout, types.ErrTryAgainLater, "hoststack-cni: agent unreachable"); err != nil {
		if qerr := queue(conf.PendingDir, hcni.CommandAdd, req); qerr != nil {
			fmt.Fprintf(os.Stderr, "hoststack-cni: ADD %s: agent: %v; queueing failed too: %v\n", req.AttachmentKey, err, qerr)
		} else {
			fmt.Fprintf(os.Stderr, "hoststack-cni: ADD %s queued in %s: agent: %v\n", req.AttachmentKey, conf.PendingDir, err)
		}
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
	if qerr := queue(conf.PendingDir, hcni.CommandDel, req); qerr != nil {
		fmt.Fprintf(os.Stderr, "hoststack-cni: DEL %s: agent: %v; queueing failed too: %v\n", req.AttachmentKey, err, qerr)
		return nil
	}
	fmt.Fprintf(os.Stderr, "hoststack-cni: DEL %s queued in %s: agent: %v\n", req.AttachmentKey, conf.PendingDir, err)
	return nil
}

// queue writes req for command into dir atomically: a temporary
// dot-file, then a rename to its final name, so the agent never reads half
// a file.
func queue(dir, command string, req *hcni.Request) error {
	if !hcni.ValidKey(req.AttachmentKey) {
		return fmt.Errorf("container ID %q or ifname %q cannot name a file", req.ContainerID, req.IfName)
	}
	name := hcni.PendingFileName(req.AttachmentKey)
	if command == hcni.CommandAdd {
		name = hcni.PendingAddFileName(req.AttachmentKey)
	}
	req.Command = command
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
	return os.Rename(tmp, filepath.Join(dir, name))
}

// cmdStatus answers from what ADD needs, not from the agent: ADD works
// while the agent is down (it queues), and a failed STATUS would make the
// runtime report the node's network not ready and stop all its pods.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(conf.PendingDir, 0o700); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "plugin not available", "pendingDir: "+err.Error())
	}
	if err := unix.Access(conf.PendingDir, unix.W_OK|unix.X_OK); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "plugin not available", fmt.Sprintf("pendingDir %s is not writable: %v", conf.PendingDir, err))
	}
	return nil
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
