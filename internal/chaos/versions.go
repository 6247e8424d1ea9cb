package chaos

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// versionsFile is scripts/versions.env in this checkout: the broker
// versions and JVM flags that scripts/brokers uses too.
func versionsFile() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "versions.env")
}

// Versions reads scripts/versions.env: KEY=VALUE lines, a value optionally
// in double quotes; blank lines and # comments are skipped.
func Versions() (map[string]string, error) {
	f, err := os.Open(versionsFile())
	if err != nil {
		return nil, fmt.Errorf("chaos: broker versions: %w", err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(v, "$`") {
			return nil, fmt.Errorf("chaos: %s:%d: want KEY=VALUE without expansions, got %q", versionsFile(), n, line)
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		vars[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("chaos: read %s: %w", versionsFile(), err)
	}
	return vars, nil
}

// version returns one value of scripts/versions.env, or an error naming it
// when it is missing.
func version(key string) (string, error) {
	vars, err := Versions()
	if err != nil {
		return "", err
	}
	v, ok := vars[key]
	if !ok || v == "" {
		return "", fmt.Errorf("chaos: %s has no %s", versionsFile(), key)
	}
	return v, nil
}
