package csi

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hoststack/hoststack/api/attach"
)

// DriverName is the CSI driver name pods mount and kubelet registers.
const DriverName = attach.CSIDriver

// Volume context keys kubelet sets for an inline ephemeral volume of a
// CSIDriver with podInfoOnMount: true.
const (
	ctxEphemeral    = "csi.storage.k8s.io/ephemeral"
	ctxPodName      = "csi.storage.k8s.io/pod.name"
	ctxPodNamespace = "csi.storage.k8s.io/pod.namespace"
	ctxPodUID       = "csi.storage.k8s.io/pod.uid"
)

// identity is the CSI Identity service.
type identity struct {
	csi.UnimplementedIdentityServer
	name, version string
}

func (i *identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: i.name, VendorVersion: i.version}, nil
}

// GetPluginCapabilities reports none: no controller service (inline
// ephemeral volumes are never provisioned or attached) and no topology.
func (i *identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (i *identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// node is the CSI Node service.
type node struct {
	csi.UnimplementedNodeServer
	driver   string
	nodeName string
	pods     PodSockets
	log      *slog.Logger
}

func (n *node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.nodeName}, nil
}

// NodeGetCapabilities reports none: no staging, no stats, no expansion.
func (n *node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func (n *node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	target := req.GetTargetPath()
	if target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "target_path must be an absolute path, got %q", target)
	}
	capab := req.GetVolumeCapability()
	if capab == nil {
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	if capab.GetBlock() != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s serves a directory holding an attach socket: block access is not supported", n.driver)
	}
	vc := req.GetVolumeContext()
	if eph := vc[ctxEphemeral]; eph != "true" {
		return nil, status.Errorf(codes.InvalidArgument,
			"%s serves only inline ephemeral volumes (volume context %s=%q): mount it as a csi volume in the pod spec, not through a PersistentVolume, and give its CSIDriver object volumeLifecycleModes [Ephemeral] and podInfoOnMount: true",
			n.driver, ctxEphemeral, eph)
	}
	pod := PodRef{Namespace: vc[ctxPodNamespace], Name: vc[ctxPodName], UID: vc[ctxPodUID],
		AppNamespace: vc[attach.VolumeAttrAppNamespace]}
	for _, kv := range [...]struct{ key, val string }{{ctxPodNamespace, pod.Namespace}, {ctxPodName, pod.Name}, {ctxPodUID, pod.UID}} {
		if kv.val == "" {
			return nil, status.Errorf(codes.InvalidArgument, "volume context lacks %s: the %s CSIDriver object must set podInfoOnMount: true", kv.key, n.driver)
		}
	}
	if err := pod.validate(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume context: %v", err)
	}
	log := n.log.With("pod", pod.String(), "podNamespace", pod.Namespace, "podName", pod.Name, "podUID", pod.UID, "volumeID", req.GetVolumeId(), "targetPath", target)
	_, statErr := os.Lstat(target)
	created := errors.Is(statErr, os.ErrNotExist)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return nil, status.Errorf(codes.Internal, "creating target path: %v", err)
	}
	if err := os.Chmod(target, 0o755); err != nil {
		return nil, status.Errorf(codes.Internal, "target path mode: %v", err)
	}
	path, err := n.pods.Publish(ctx, pod, target)
	if err != nil {
		log.Warn("NodePublishVolume refused", "err", err)
		if created {
			_ = os.Remove(target) // as it was: kubelet retries
		}
		return nil, publishStatus(err)
	}
	log.Info("NodePublishVolume: pod attach socket served", "socket", path)
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishStatus maps a PodSockets error to the gRPC status kubelet reports
// in the pod's events.
func publishStatus(err error) error {
	switch {
	case errors.Is(err, ErrNotSelected):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrConflict):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

func (n *node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	target := req.GetTargetPath()
	if target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "target_path must be an absolute path, got %q", target)
	}
	log := n.log.With("volumeID", req.GetVolumeId(), "targetPath", target)
	if err := n.pods.Unpublish(ctx, target); err != nil {
		log.Warn("NodeUnpublishVolume failed", "err", err)
		return nil, status.Errorf(codes.Internal, "closing the pod's attach socket: %v", err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("NodeUnpublishVolume failed", "err", err)
		return nil, status.Errorf(codes.Internal, "removing target path: %v", err)
	}
	log.Info("NodeUnpublishVolume: pod attach socket closed")
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
