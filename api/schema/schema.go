// Package schema defaults and validates hoststack objects against the
// generated CRDs the way the API server does (OpenAPI schema, CEL rules,
// defaults, unknown fields), without an API server. The standalone agent uses
// it so a YAML file that `kubectl apply` would refuse is refused with the same
// field path and message, from one source of truth: config/crd/bases.
package schema

import (
	"context"
	"fmt"
	"io/fs"
	"strings"

	apiextensionsinternal "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	structuralpruning "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	metavalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/hoststack/hoststack/config/crd"
)

// Validator holds the compiled schema of every served version of every
// hoststack kind.
type Validator struct {
	kinds map[schema.GroupVersionKind]*kindSchema
}

type kindSchema struct {
	namespaced bool
	structural *structuralschema.Structural
	openapi    apiservervalidation.SchemaValidator
	cel        *cel.Validator // nil when the schema has no CEL rules
}

// New compiles the embedded CRDs.
func New() (*Validator, error) {
	return NewFromFS(crd.Bases, "bases")
}

// NewFromFS compiles the CRD manifests in dir of fsys.
func NewFromFS(fsys fs.FS, dir string) (*Validator, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("reading CRDs: %w", err)
	}
	v := &Validator{kinds: map[schema.GroupVersionKind]*kindSchema{}}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		data, err := fs.ReadFile(fsys, dir+"/"+e.Name())
		if err != nil {
			return nil, fmt.Errorf("reading CRD %s: %w", e.Name(), err)
		}
		var c apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return nil, fmt.Errorf("parsing CRD %s: %w", e.Name(), err)
		}
		if err := v.add(&c); err != nil {
			return nil, fmt.Errorf("compiling CRD %s: %w", c.Name, err)
		}
	}
	return v, nil
}

func (v *Validator) add(c *apiextensionsv1.CustomResourceDefinition) error {
	for _, ver := range c.Spec.Versions {
		if !ver.Served || ver.Schema == nil || ver.Schema.OpenAPIV3Schema == nil {
			continue
		}
		var internal apiextensionsinternal.JSONSchemaProps
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(ver.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
			return fmt.Errorf("converting schema of %s: %w", ver.Name, err)
		}
		st, err := structuralschema.NewStructural(&internal)
		if err != nil {
			return fmt.Errorf("structural schema of %s: %w", ver.Name, err)
		}
		openapi, _, err := apiservervalidation.NewSchemaValidator(&internal)
		if err != nil {
			return fmt.Errorf("schema validator of %s: %w", ver.Name, err)
		}
		gvk := schema.GroupVersionKind{Group: c.Spec.Group, Version: ver.Name, Kind: c.Spec.Names.Kind}
		v.kinds[gvk] = &kindSchema{
			namespaced: c.Spec.Scope == apiextensionsv1.NamespaceScoped,
			structural: st,
			openapi:    openapi,
			cel:        cel.NewValidator(st, true, celconfig.PerCallLimit),
		}
	}
	return nil
}

// Known reports whether gvk is one of the compiled kinds.
func (v *Validator) Known(gvk schema.GroupVersionKind) bool {
	_, ok := v.kinds[gvk]
	return ok
}

// Admit defaults obj in place and validates it as the API server would on
// create: metadata, unknown fields (strict, as `kubectl apply` does by
// default), the OpenAPI schema and the CEL rules. Namespaced objects without a
// namespace get "default".
func (v *Validator) Admit(ctx context.Context, obj *unstructured.Unstructured) field.ErrorList {
	gvk := obj.GroupVersionKind()
	ks, ok := v.kinds[gvk]
	if !ok {
		return field.ErrorList{field.NotSupported(field.NewPath("kind"), gvk.String(), v.kindNames())}
	}
	if ks.namespaced && obj.GetNamespace() == "" {
		obj.SetNamespace(metav1.NamespaceDefault)
	}
	var errs field.ErrorList
	var meta metav1.ObjectMeta
	meta.Name, meta.Namespace, meta.Labels, meta.Annotations = obj.GetName(), obj.GetNamespace(), obj.GetLabels(), obj.GetAnnotations()
	if meta.Name == "" && obj.GetGenerateName() != "" {
		errs = append(errs, field.Forbidden(field.NewPath("metadata", "generateName"), "not supported here: set metadata.name"))
	}
	errs = append(errs, metavalidation.ValidateObjectMeta(&meta, ks.namespaced, metavalidation.NameIsDNSSubdomain, field.NewPath("metadata"))...)

	unknown := structuralpruning.PruneWithOptions(obj.Object, ks.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	for _, p := range unknown {
		errs = append(errs, field.Forbidden(field.NewPath(p), "unknown field"))
	}
	structuraldefaulting.Default(obj.Object, ks.structural)

	errs = append(errs, apiservervalidation.ValidateCustomResource(nil, obj.Object, ks.openapi)...)
	if ks.cel != nil {
		celErrs, _ := ks.cel.Validate(ctx, nil, ks.structural, obj.Object, nil, celconfig.RuntimeCELCostBudget)
		errs = append(errs, celErrs...)
	}
	return errs
}

func (v *Validator) kindNames() []string {
	var out []string
	for gvk := range v.kinds {
		out = append(out, gvk.GroupVersion().String()+", Kind="+gvk.Kind)
	}
	return out
}
