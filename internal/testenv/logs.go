package testenv

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// LogBuffer keeps what is written to it, safe for concurrent writers (a
// broker's goroutines, a child process's output).
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// DebugLogger returns a logger that writes every record, at debug level and
// above, to w twice: as text and as JSON, which escape differently, so a
// test searching the output for a secret sees both renderings.
func DebugLogger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	return slog.New(fanout{slog.NewTextHandler(w, opts), slog.NewJSONHandler(w, opts)})
}

type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool { return f[0].Enabled(ctx, l) }

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range f {
		errs = append(errs, h.Handle(ctx, r.Clone()))
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(as []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(as)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
}

// AssertNoSecret fails the test when any of secrets appears in any of
// texts; what names the texts in the failure ("a log record", "an error").
func AssertNoSecret(t testing.TB, secrets []string, what string, texts ...string) {
	t.Helper()
	for _, s := range secrets {
		for _, txt := range texts {
			assert.NotContains(t, txt, s, "a credential appears in %s", what)
		}
	}
}
