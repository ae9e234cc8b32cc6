package chart

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apimachinery/pkg/util/version"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/cel/environment"
	"sigs.k8s.io/yaml"
)

// celErrors compiles every x-kubernetes-validations rule of the chart's
// CRDs as an API server of minor version 1.<minor> does when a CRD is
// created: with the CEL environment of its compatibility version (one minor
// below its own), the libraries introduced later unknown. It returns the
// rules that do not compile.
func celErrors(t *testing.T, minor uint) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs: %v", err)
	}
	envSet := environment.MustBaseEnvSet(version.MajorMinor(1, minor-1))
	var bad []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd apiextv1.CustomResourceDefinition
		if err := yaml.Unmarshal(b, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, v := range crd.Spec.Versions {
			if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
				continue
			}
			var s apiextensions.JSONSchemaProps
			if err := apiextv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &s, nil); err != nil {
				t.Fatal(err)
			}
			walkCEL(t, &s, validation.RootCELContext(&s), crd.Name+"/"+v.Name, func(path string, ctx *validation.CELSchemaContext, rules apiextensions.ValidationRules) {
				ti, err := ctx.TypeInfo()
				if err != nil || ti == nil {
					t.Fatalf("%s: type info: %v", path, err)
				}
				results, err := cel.Compile(ti.Schema, ti.DeclType, celconfig.PerCallLimit, envSet, cel.NewExpressionsEnvLoader())
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				for i, r := range results {
					if r.Error != nil {
						bad = append(bad, fmt.Sprintf("%s: %q: %s", path, rules[i].Rule, r.Error.Detail))
					}
				}
			})
		}
	}
	sort.Strings(bad)
	return bad
}

// walkCEL calls fn for every schema node that has validation rules.
func walkCEL(t *testing.T, s *apiextensions.JSONSchemaProps, ctx *validation.CELSchemaContext, path string, fn func(string, *validation.CELSchemaContext, apiextensions.ValidationRules)) {
	if len(s.XValidations) > 0 {
		fn(path, ctx, s.XValidations)
	}
	for name, p := range s.Properties {
		walkCEL(t, &p, ctx.ChildPropertyContext(&p, name), path+"."+name, fn)
	}
	if s.Items != nil && s.Items.Schema != nil {
		walkCEL(t, s.Items.Schema, ctx.ChildItemsContext(s.Items.Schema), path+"[]", fn)
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		walkCEL(t, s.AdditionalProperties.Schema, ctx.ChildAdditionalPropertiesContext(s.AdditionalProperties.Schema), path+"{}", fn)
	}
}

// The chart's kubeVersion is the oldest Kubernetes whose API server
// accepts the CRDs' validation rules, measured with the API server's own
// CEL environments: every rule compiles for it, and some do not for the
// minor before.
func TestKubeVersionIsWhatTheCRDsNeed(t *testing.T) {
	const newest = 37 // the envtest API server's minor
	if bad := celErrors(t, newest); len(bad) > 0 {
		t.Fatalf("rules that 1.%d refuses:\n%s", newest, strings.Join(bad, "\n"))
	}
	oldest := uint(newest)
	var refusedBefore []string
	for m := uint(newest - 1); m >= 25; m-- {
		bad := celErrors(t, m)
		if len(bad) > 0 {
			refusedBefore = bad
			break
		}
		oldest = m
	}
	t.Logf("oldest API server accepting the CRDs: 1.%d; 1.%d refuses:\n%s", oldest, oldest-1, strings.Join(refusedBefore, "\n"))
	b, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta chart.Metadata
	if err := yaml.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(">=1.%d.0-0", oldest); meta.KubeVersion != want {
		t.Errorf("Chart.yaml kubeVersion %q, the CRDs need %q", meta.KubeVersion, want)
	}
}
