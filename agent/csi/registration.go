package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// registration is kubelet's plugin-registration service: kubelet's plugin
// watcher finds the socket in its registry directory, asks GetInfo, checks
// the plugin through its endpoint (NodeGetInfo) and reports the outcome.
type registration struct {
	registerapi.UnimplementedRegistrationServer
	name     string
	endpoint string
	log      *slog.Logger
	notify   func(error)
}

// supportedVersions are the CSI versions the plugin speaks, as kubelet reads
// them.
var supportedVersions = []string{"1.0.0"}

func (r *registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	r.log.Info("kubelet asked for plugin info", "endpoint", r.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: append([]string(nil), supportedVersions...),
	}, nil
}

func (r *registration) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	var err error
	if st.GetPluginRegistered() {
		r.log.Info("kubelet registered the CSI plugin")
	} else {
		msg := st.GetError()
		if msg == "" {
			msg = "no reason given"
		}
		err = fmt.Errorf("%w: kubelet did not register CSI driver %s: %s", ErrRegistration, r.name, msg)
		r.log.Error("kubelet refused the CSI plugin", "err", msg)
	}
	if r.notify != nil {
		r.notify(err)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// ErrRegistration wraps the error kubelet reported when it refused the
// plugin.
var ErrRegistration = errors.New("plugin registration failed")
