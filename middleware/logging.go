package middleware

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// LoggingOption configures Logging.
type LoggingOption func(*loggingConfig)

type loggingConfig struct {
	level   func(rpc.Code) slog.Level
	headers []string
}

// WithLogLevel sets how the level of a call's record follows from its
// status code. Default: DefaultLogLevel. A nil fn selects the default.
func WithLogLevel(fn func(code rpc.Code) slog.Level) LoggingOption {
	return func(c *loggingConfig) { c.level = fn }
}

// WithLoggedHeaders adds the named request headers to each record, in a
// group "header". Only the headers named are logged, so credentials stay
// out of the log unless named here: never name authorization or cookie
// headers. Default: none. Calling it again adds names.
func WithLoggedHeaders(names ...string) LoggingOption {
	return func(c *loggingConfig) { c.headers = append(c.headers, names...) }
}

// DefaultLogLevel is the default level of a Logging record: Info for OK,
// Error for codes that mean the server or the path to it failed (Unknown,
// DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss, the
// set OpenTelemetry's RPC conventions count as server errors), and Warn
// for the other codes, which mean the caller's request was refused.
func DefaultLogLevel(code rpc.Code) slog.Level {
	switch {
	case code == rpc.OK:
		return slog.LevelInfo
	case isServerFault(code):
		return slog.LevelError
	default:
		return slog.LevelWarn
	}
}

// isServerFault reports whether code means a failure of the server or of
// the path to it, rather than a refusal of the caller's request.
func isServerFault(code rpc.Code) bool {
	switch code {
	case rpc.Unknown, rpc.DeadlineExceeded, rpc.Unimplemented, rpc.Internal, rpc.Unavailable, rpc.DataLoss:
		return true
	}
	return false
}

// Logging returns a middleware that writes one record per call (on a
// client) or per request (on a server) to logger, when the call ends, with
// the message "mqrpc call" and these attributes:
//
//   - side: "client" or "server"
//   - service (client only), method, subject, id (the message ID)
//   - code: the status code name, such as "ok" or "not_found"
//   - duration: the time spent in the rest of the chain
//   - request_bytes, reply_bytes: body sizes
//   - error: the error message, when the call failed
//   - failed: true when there was no reply at all (a client's transport
//     error, or a server's delivery failure that the broker nacks)
//   - header: the headers named with WithLoggedHeaders
//
// The level follows the outcome (see DefaultLogLevel and WithLogLevel).
// Bodies are never logged, and headers only when named. A nil logger
// discards everything at no cost.
//
// On a server, put Logging outside the middleware that may refuse requests
// so refusals are logged too. It is safe for concurrent use.
func Logging(logger *slog.Logger, opts ...LoggingOption) rpc.Middleware {
	cfg := loggingConfig{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.level == nil {
		cfg.level = DefaultLogLevel
	}
	return func(next broker.Handler) broker.Handler {
		if logger == nil {
			return next
		}
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			// Read the request before passing it on: once the broker
			// has it, the message is not ours to read.
			start := time.Now()
			ci, client := rpc.CallInfoFromContext(ctx)
			method := req.Header.Get(broker.HeaderMethod)
			subject, id, reqBytes := req.Subject, req.ID, len(req.Body)
			var hdr []slog.Attr
			for _, name := range cfg.headers {
				if v := req.Header.Get(name); v != "" {
					hdr = append(hdr, slog.String(name, v))
				}
			}

			reply, err := next.ServeMessage(ctx, req)

			out := callOutcome(client, reply, err)
			level := cfg.level(out.code)
			if !logger.Enabled(ctx, level) {
				return reply, err
			}
			attrs := make([]slog.Attr, 0, 12)
			if client {
				attrs = append(attrs, slog.String("side", "client"), slog.String("service", ci.Service))
			} else {
				attrs = append(attrs, slog.String("side", "server"))
			}
			attrs = append(attrs,
				slog.String("method", method),
				slog.String("subject", subject),
				slog.String("id", id),
				slog.String("code", out.code.String()),
				slog.Duration("duration", time.Since(start)),
				slog.Int("request_bytes", reqBytes),
				slog.Int("reply_bytes", out.replyBytes),
			)
			if out.message != "" {
				attrs = append(attrs, slog.String("error", out.message))
			}
			if out.failed {
				attrs = append(attrs, slog.Bool("failed", true))
			}
			if len(hdr) > 0 {
				attrs = append(attrs, slog.Attr{Key: "header", Value: slog.GroupValue(hdr...)})
			}
			logger.LogAttrs(ctx, level, "mqrpc call", attrs...)
			return reply, err
		})
	}
}

// outcome is what a middleware observed of a finished call or request.
type outcome struct {
	code       rpc.Code
	message    string // error message; "" on success
	failed     bool   // no reply: transport error (client) or delivery failure (server)
	replyBytes int
}

// callOutcome interprets what the rest of a chain returned. On a server an
// *rpc.Error is an error reply and any other error a delivery failure; a
// reply may itself carry an error status (when the chain wraps an
// rpc.Server rather than sits inside one). On a client the innermost
// handler returns the reply together with the error of an error reply, so
// an error without a reply means nothing came back.
func callOutcome(client bool, reply *broker.Message, err error) outcome {
	var o outcome
	if reply != nil {
		o.replyBytes = len(reply.Body)
	}
	switch {
	case err != nil:
		o.code, o.message = rpc.CodeOf(err), err.Error()
		if client {
			o.failed = reply == nil
		} else {
			var e *rpc.Error
			o.failed = !errors.As(err, &e)
		}
	case reply != nil:
		if rerr := rpc.ErrorFromReply(reply); rerr != nil {
			o.code, o.message = rpc.CodeOf(rerr), rerr.Error()
		}
	}
	return o
}

// callSide names the side of the chain ctx belongs to: client calls carry
// an rpc.CallInfo, server deliveries do not.
func callSide(ctx context.Context) string {
	if _, ok := rpc.CallInfoFromContext(ctx); ok {
		return "client"
	}
	return "server"
}
