// Package cni is the node agent's side of the hoststack-cni chained plugin:
// a server on a unix socket that learns, per CNI attachment, which pod it
// belongs to, its network namespace, interfaces and IPs; a persisted
// registry of those attachments with a read API (Lookup, Subscribe) for the
// rest of the agent; Install/Uninstall of the plugin binary and of its
// entry in the node's primary CNI conflist (Primary picks that file as the
// runtime does); and a Keeper that keeps the entry there.
//
// Protocol (version 1): HTTP/1.1 over the unix socket, JSON bodies. The
// plugin POSTs a Request to /v1/add, /v1/del, /v1/check or /v1/gc. Success
// is 200 with an empty JSON object; failure is a non-2xx status with an
// ErrorBody carrying a CNI error code. ADDs and DELs the agent does not
// take are queued as files in the pending directory (PendingFileName),
// which the agent applies in the order they were queued. GET /v1/status
// tells whether the agent has applied its configuration (diagnostics; the
// plugin's STATUS does not ask it).
package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Defaults shared by the plugin and the agent.
const (
	DefaultSocket     = "/run/hoststack/cni.sock"
	DefaultPendingDir = "/var/lib/hoststack/cni-pending"
	PluginType        = "hoststack-cni"
)

// Protocol paths (version 1).
const (
	PathAdd    = "/v1/add"
	PathDel    = "/v1/del"
	PathCheck  = "/v1/check"
	PathGC     = "/v1/gc"
	PathStatus = "/v1/status"
)

// CNI error codes the agent answers with (the CNI spec's well-known codes).
const (
	CodeUnknownContainer   uint = 3
	CodeDecodingFailure    uint = 6
	CodeTryAgainLater      uint = 11
	CodePluginNotAvailable uint = 50
	CodeInternal           uint = 999
)

// AttachmentKey names one attachment the way the CNI runtime does.
type AttachmentKey struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

func (k AttachmentKey) String() string { return k.ContainerID + "/" + k.IfName }

// PodRef is the pod an attachment belongs to, from CNI_ARGS.
type PodRef struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
}

// Interface is one interface of the previous result. Sandbox is the netns
// path for interfaces inside the pod, empty for host-side ones.
type Interface struct {
	Name    string `json:"name"`
	Mac     string `json:"mac,omitempty"`
	Sandbox string `json:"sandbox,omitempty"`
}

// IPConfig is one address of the previous result. Interface is the index
// into Interfaces, or nil when the result did not say.
type IPConfig struct {
	Address   string `json:"address"` // CIDR, e.g. 10.1.2.3/24
	Gateway   string `json:"gateway,omitempty"`
	Interface *int   `json:"interface,omitempty"`
}

// Request is what the plugin sends for every command. Fields a command does
// not use are empty.
type Request struct {
	AttachmentKey
	Network    string      `json:"network,omitempty"` // netconf "name"
	CNIVersion string      `json:"cniVersion,omitempty"`
	Netns      string      `json:"netns,omitempty"`
	Pod        PodRef      `json:"pod,omitempty"`
	Interfaces []Interface `json:"interfaces,omitempty"`
	IPs        []IPConfig  `json:"ips,omitempty"`
	// ValidAttachments is GC's list of attachments the runtime still has.
	ValidAttachments []AttachmentKey `json:"validAttachments,omitempty"`
	// Command and QueuedAt are set on the ADDs and DELs the plugin queued
	// in the pending directory because the agent did not take them. A
	// record without Command is a DEL (the only command queued before).
	Command  string    `json:"command,omitempty"`
	QueuedAt time.Time `json:"queuedAt,omitzero"`
}

// Commands of queued requests.
const (
	CommandAdd = "ADD"
	CommandDel = "DEL"
)

// ErrorBody is a failed call's answer: a CNI error.
type ErrorBody struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *ErrorBody) Error() string {
	if e.Details == "" {
		return e.Msg
	}
	return e.Msg + "; " + e.Details
}

// Client talks to the agent's CNI socket.
type Client struct {
	hc *http.Client
}

// NewClient returns a client for the socket at path; every call is bounded
// by timeout (dial included).
func NewClient(path string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	return &Client{hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// ErrUnreachable wraps failures to reach the agent at all (as opposed to
// the agent answering with an error).
var ErrUnreachable = errors.New("hoststack agent unreachable")

// Do sends req to path. It returns an *ErrorBody when the agent answered
// with an error, and an error wrapping ErrUnreachable when it could not be
// reached or did not answer.
func (c *Client) Do(ctx context.Context, path string, req *Request) error {
	method := http.MethodPost
	var body io.Reader
	if req == nil {
		method = http.MethodGet
	} else {
		b, err := json.Marshal(req)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, "http://hoststack-agent"+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		hreq.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(hreq)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%w: reading answer: %w", ErrUnreachable, err)
	}
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var eb ErrorBody
	if err := json.Unmarshal(data, &eb); err != nil || eb.Msg == "" {
		return &ErrorBody{Code: CodeInternal, Msg: fmt.Sprintf("agent answered %s", resp.Status), Details: string(bytes.TrimSpace(data))}
	}
	return &eb
}
