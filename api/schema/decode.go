package schema

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Object is one admitted object and where it came from.
type Object struct {
	*unstructured.Unstructured
	Source string // "file.yaml#2": file and 1-based document index
}

// InvalidError lists every problem found in a set of manifests, each naming
// its source, object and field.
type InvalidError struct{ Problems []string }

func (e *InvalidError) Error() string {
	return fmt.Sprintf("%d invalid object(s):\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Decode splits a multi-document YAML stream, skips empty documents, and
// admits every object (see Admit). It returns the objects only when all are
// valid; otherwise an *InvalidError naming every bad field, so a caller never
// acts on half a directory.
func (v *Validator) Decode(ctx context.Context, source string, data []byte) ([]Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []Object
	var problems []string
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: reading YAML document %d: %w", source, doc, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		where := fmt.Sprintf("%s#%d", source, doc)
		var m map[string]any
		if err := yaml.Unmarshal(raw, &m); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", where, err))
			continue
		}
		if m == nil { // a document of only comments
			continue
		}
		obj := &unstructured.Unstructured{Object: m}
		for _, e := range v.Admit(ctx, obj) {
			problems = append(problems, fmt.Sprintf("%s: %s %s: %s", where, obj.GetKind(), obj.GetName(), e.Error()))
		}
		out = append(out, Object{Unstructured: obj, Source: where})
	}
	if len(problems) > 0 {
		return nil, &InvalidError{Problems: problems}
	}
	return out, nil
}
