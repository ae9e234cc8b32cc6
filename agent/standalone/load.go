// Package standalone runs the session engine without Kubernetes, from a
// directory of the same YAML a cluster would take (AppNamespace objects, and
// the v1 Secrets their secretRefs name). Objects are admitted by api/schema —
// the generated CRDs, defaults and CEL rules included — so a file
// `kubectl apply` would refuse is refused here with the same message.
package standalone

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/hoststack/hoststack/agent/render"
	hsschema "github.com/hoststack/hoststack/api/schema"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// Load reads every *.yaml, *.yml and *.json file of dir (not recursive, in
// name order) and returns the render input. It fails — naming file, object
// and field of every problem — if any document is invalid, so a caller never
// runs half a directory.
func Load(ctx context.Context, v *hsschema.Validator, dir string) (render.Input, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return render.Input{}, fmt.Errorf("reading config directory: %w", err)
	}
	var names []string
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.Type().IsRegular() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)

	in := render.Input{Secrets: map[string]string{}, SecretData: map[string]map[string][]byte{}}
	var problems []string
	seen := map[string]string{} // "Kind ns/name" → source
	for _, name := range names {
		path := filepath.Join(dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			return render.Input{}, fmt.Errorf("reading %s: %w", path, err)
		}
		secrets, rest, err := splitSecrets(path, data)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		for _, s := range secrets {
			in.Secrets[s.Namespace+"/"+s.Name] = secretValue(s)
			data := map[string][]byte{}
			for k, v := range s.Data {
				data[k] = v
			}
			for k, v := range s.StringData {
				data[k] = []byte(v)
			}
			in.SecretData[s.Namespace+"/"+s.Name] = data
		}
		objs, err := v.Decode(ctx, path, rest)
		var inv *hsschema.InvalidError
		if errors.As(err, &inv) {
			problems = append(problems, inv.Problems...)
			continue
		}
		if err != nil {
			return render.Input{}, err
		}
		for _, o := range objs {
			id := o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
			if prev, dup := seen[id]; dup {
				problems = append(problems, fmt.Sprintf("%s: %s is also defined at %s", o.Source, id, prev))
				continue
			}
			seen[id] = o.Source
			switch o.GroupVersionKind() {
			case hsv1.GroupVersion.WithKind("AppNamespace"):
				var an hsv1.AppNamespace
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &an); err != nil {
					problems = append(problems, fmt.Sprintf("%s: %s: %v", o.Source, id, err))
					continue
				}
				in.AppNamespaces = append(in.AppNamespaces, an)
			case hsv1.GroupVersion.WithKind("SessionRule"):
				var sr hsv1.SessionRule
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &sr); err != nil {
					problems = append(problems, fmt.Sprintf("%s: %s: %v", o.Source, id, err))
					continue
				}
				// No API server stamps creation times here: earlier in the
				// directory (file name, then document order) counts as older,
				// which decides conflicts the way creation time does in a
				// cluster.
				sr.CreationTimestamp = metav1.NewTime(orderEpoch.Add(time.Duration(len(in.SessionRules)) * time.Second))
				in.SessionRules = append(in.SessionRules, sr)
			case hsv1.GroupVersion.WithKind("CertKeyPair"):
				var ckp hsv1.CertKeyPair
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &ckp); err != nil {
					problems = append(problems, fmt.Sprintf("%s: %s: %v", o.Source, id, err))
					continue
				}
				in.CertKeyPairs = append(in.CertKeyPairs, ckp)
			default:
				problems = append(problems, fmt.Sprintf("%s: %s: kind %s is not used in standalone mode", o.Source, id, o.GetKind()))
			}
		}
	}
	if len(problems) > 0 {
		return render.Input{}, &hsschema.InvalidError{Problems: problems}
	}
	return in, nil
}

// orderEpoch is the synthetic creation time of the first SessionRule read.
var orderEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

var secretGVK = schema.GroupVersionKind{Version: "v1", Kind: "Secret"}

// splitSecrets takes the v1 Secret documents out of a YAML stream (the CRD
// validator knows only hoststack kinds) and returns the rest unchanged.
func splitSecrets(path string, data []byte) ([]corev1.Secret, []byte, error) {
	docs, err := splitDocs(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var secrets []corev1.Secret
	var rest [][]byte
	for i, d := range docs {
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yamlUnmarshal(d, &tm); err == nil && tm.APIVersion == secretGVK.Version && tm.Kind == secretGVK.Kind {
			var s corev1.Secret
			if err := yamlUnmarshalStrict(d, &s); err != nil {
				return nil, nil, fmt.Errorf("%s#%d: Secret: %w", path, i+1, err)
			}
			if s.Namespace == "" {
				s.Namespace = "default"
			}
			secrets = append(secrets, s)
			// Keep document numbering stable for error messages.
			rest = append(rest, []byte("# Secret\n"))
			continue
		}
		rest = append(rest, d)
	}
	var joined []byte
	for i, d := range rest {
		if i > 0 {
			joined = append(joined, []byte("\n---\n")...)
		}
		joined = append(joined, d...)
	}
	return secrets, joined, nil
}

func secretValue(s corev1.Secret) string {
	if v, ok := s.StringData[render.SecretKey]; ok {
		return v
	}
	return string(s.Data[render.SecretKey])
}
