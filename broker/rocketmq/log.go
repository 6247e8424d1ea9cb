package rocketmq

import (
	"context"
	"log/slog"
	"sort"
	"sync"

	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/rlog"
)

// rocketmq-client-go logs through one process-wide logger (package rlog,
// logrus on stderr by default) that cannot be set per client. mqrpc
// replaces it, once per process, with clientLog: a fan-out to the loggers of
// the Brokers that are open and were given one (WithLogger). With none, the
// client's logs are discarded, so nothing is printed unasked.
//
// This is the package's only mutable global; it exists because rlog is
// global. rlog.SetLogger is called exactly once (sync.Once) because rlog
// reads its logger without synchronization: calling it again while clients
// run would race.
var (
	clientLogOnce sync.Once
	clientLogSink = &clientLog{loggers: map[*Broker]*slog.Logger{}}
)

// installClientHooks sets rocketmq-client-go's two process-wide hooks, once:
//   - rlog's logger, to c;
//   - primitive.PanicHandler, unless the application set one. The client
//     runs its goroutines through primitive.WithRecover, which recovers only
//     when a handler is set, and some of them panic on ordinary failures: a
//     failed asynchronous send (a timeout, a dropped connection) goes on to
//     read the missing response and dereferences nil (producer.sendAsync in
//     v2.1.2). Without a handler that kills the whole process.
func installClientHooks(c *clientLog) {
	rlog.SetLogger(c)
	if primitive.PanicHandler == nil {
		primitive.PanicHandler = func(v interface{}) {
			c.Error("rocketmq-client-go: recovered panic", map[string]interface{}{"panic": v})
		}
	}
}

type clientLog struct {
	mu      sync.RWMutex
	loggers map[*Broker]*slog.Logger
}

// attach routes the client's logs to l while b is open. The first call
// also installs the process-wide hooks (see installClientHooks).
func (c *clientLog) attach(b *Broker, l *slog.Logger) {
	clientLogOnce.Do(func() { installClientHooks(c) })
	if l == nil {
		return
	}
	c.mu.Lock()
	c.loggers[b] = l
	c.mu.Unlock()
}

func (c *clientLog) detach(b *Broker) {
	c.mu.Lock()
	delete(c.loggers, b)
	c.mu.Unlock()
}

func (c *clientLog) log(level slog.Level, msg string, fields map[string]interface{}) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(c.loggers) == 0 {
		return
	}
	var attrs []slog.Attr
	seen := make(map[slog.Handler]bool, len(c.loggers))
	for _, l := range c.loggers {
		h := l.Handler()
		if seen[h] || !l.Enabled(context.Background(), level) {
			continue
		}
		seen[h] = true
		if attrs == nil {
			attrs = make([]slog.Attr, 0, len(fields)+1)
			attrs = append(attrs, slog.String("component", "rocketmq-client-go"))
			keys := make([]string, 0, len(fields))
			for k := range fields {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				attrs = append(attrs, slog.Any(k, fields[k]))
			}
		}
		l.LogAttrs(context.Background(), level, msg, attrs...)
	}
}

func (c *clientLog) Debug(msg string, fields map[string]interface{}) {
	c.log(slog.LevelDebug, msg, fields)
}

func (c *clientLog) Info(msg string, fields map[string]interface{}) {
	c.log(slog.LevelInfo, msg, fields)
}

func (c *clientLog) Warning(msg string, fields map[string]interface{}) {
	c.log(slog.LevelWarn, msg, fields)
}

func (c *clientLog) Error(msg string, fields map[string]interface{}) {
	c.log(slog.LevelError, msg, fields)
}

// Fatal logs at error level. The default rlog logger exits the process on
// Fatal; a library must never do that.
func (c *clientLog) Fatal(msg string, fields map[string]interface{}) {
	c.log(slog.LevelError, msg, fields)
}

// Level is ignored: the level is each slog.Logger's business.
func (c *clientLog) Level(string) {}

// OutputPath is ignored: output is each slog.Logger's business.
func (c *clientLog) OutputPath(string) error { return nil }
