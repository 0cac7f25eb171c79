// Command render renders a Helm chart the way `helm template` does, for CI on a
// machine without helm: Go's text/template with the sprig functions (the library
// Helm uses) plus the Helm functions the Ferry chart uses (include, tpl, toYaml,
// fromYaml, required, fail, lookup, .Files.Get). It prints the rendered objects as
// one JSON array of {"source": template, "object": {...}}, or with -yaml as a
// multi-document YAML stream like `helm template`.
//
// Usage: render [-yaml] [-namespace NS] [-release NAME] CHART_DIR [VALUES.yaml ...]
//
// Build offline from Debian's packages (golang-go, golang-github-masterminds-sprig-dev,
// golang-gopkg-yaml.v3-dev) in GOPATH mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render ./charts/render
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type rendered struct {
	Source string                 `json:"source"`
	Object map[string]interface{} `json:"object"`
}

func main() {
	asYaml := flag.Bool("yaml", false, "print YAML documents instead of JSON")
	namespace := flag.String("namespace", "default", "release namespace")
	release := flag.String("release", "ferry", "release name")
	notes := flag.Bool("notes", false, "print the rendered NOTES.txt only")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: render [-yaml] [-notes] [-namespace NS] [-release NAME] CHART_DIR [VALUES.yaml ...]")
		os.Exit(2)
	}
	out, note, err := render(flag.Arg(0), flag.Args()[1:], *release, *namespace)
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
	switch {
	case *notes:
		fmt.Print(note)
	case *asYaml:
		for _, r := range out {
			b, err := yaml.Marshal(r.Object)
			if err != nil {
				fmt.Fprintln(os.Stderr, "render:", err)
				os.Exit(1)
			}
			fmt.Printf("---\n# Source: %s\n%s", r.Source, b)
		}
	default:
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			fmt.Fprintln(os.Stderr, "render:", err)
			os.Exit(1)
		}
		fmt.Println(string(b))
	}
}

func readYaml(path string) (map[string]interface{}, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// merge overlays src on dst, recursing into maps (like helm's -f).
func merge(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// files gives templates `.Files.Get`.
type files struct{ root string }

func (f files) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.root, filepath.FromSlash(name)))
	if err != nil {
		return ""
	}
	return string(b)
}

func toYaml(v interface{}) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

func fromYaml(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func render(chart string, valueFiles []string, release, namespace string) ([]rendered, string, error) {
	meta, err := readYaml(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		return nil, "", err
	}
	values, err := readYaml(filepath.Join(chart, "values.yaml"))
	if err != nil {
		return nil, "", err
	}
	for _, f := range valueFiles {
		overlay, err := readYaml(f)
		if err != nil {
			return nil, "", err
		}
		values = merge(values, overlay)
	}
	name, _ := meta["name"].(string)
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": name, "Version": meta["version"], "AppVersion": meta["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.31.0", "Major": "1", "Minor": "31"},
		},
		"Files": files{root: chart},
	}

	root := template.New("chart").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYaml
	funcs["fromYaml"] = fromYaml
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} { return map[string]interface{}{} }
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(funcs)

	dir := filepath.Join(chart, "templates")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, "", err
		}
		path := name + "/templates/" + e.Name()
		if _, err := root.New(path).Parse(string(b)); err != nil {
			return nil, "", err
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)

	var out []rendered
	note := ""
	for _, n := range names {
		if strings.HasPrefix(n, "_") {
			continue
		}
		path := name + "/templates/" + n
		ctx := map[string]interface{}{}
		for k, v := range top {
			ctx[k] = v
		}
		ctx["Template"] = map[string]interface{}{"Name": path, "BasePath": name + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, path, ctx); err != nil {
			return nil, "", err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if n == "NOTES.txt" {
			note = text
			continue
		}
		for i, doc := range strings.Split(text, "\n---") {
			obj := map[string]interface{}{}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				return nil, "", fmt.Errorf("%s document %d is not YAML: %w\n%s", path, i, err, doc)
			}
			if len(obj) == 0 {
				continue
			}
			out = append(out, rendered{Source: path, Object: obj})
		}
	}
	return out, note, nil
}
