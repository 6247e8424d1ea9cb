package control

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mqrpc/mqrpc/broker"
)

// Option configures Serve.
type Option func(*config)

type config struct {
	version, description, id string
	metadata                 map[string]string
	serve                    []broker.ServeOption
	methods                  []Method
	off                      bool
}

// WithVersion sets the version the instance reports. Default "0.0.0".
func WithVersion(v string) Option { return func(c *config) { c.version = v } }

// WithDescription sets the service's description, for INFO. Default: none.
func WithDescription(d string) Option { return func(c *config) { c.description = d } }

// WithMetadata sets the metadata the instance reports (a copy of md is
// kept). Default: none.
func WithMetadata(md map[string]string) Option {
	return func(c *config) { c.metadata = maps.Clone(md) }
}

// WithID sets the instance ID, which must be unique among the instances
// of the service and consist of letters, digits, '-' and '_'. Default: a
// random one.
func WithID(id string) Option { return func(c *config) { c.id = id } }

// WithServeOptions passes opts (concurrency, queue) to the broker's Serve
// of the service itself.
func WithServeOptions(opts ...broker.ServeOption) Option {
	return func(c *config) { c.serve = append(c.serve, opts...) }
}

// WithMethods describes the methods of a handler that is not a Describer
// (a Thrift or gRPC adapter, a hand-written broker.Handler), for INFO and
// STATS. Calling it again appends.
func WithMethods(ms ...Method) Option {
	return func(c *config) { c.methods = append(c.methods, ms...) }
}

// WithoutControl serves the service without answering control requests:
// the instance is invisible to discovery. Its Service still counts calls
// and answers Ping, Info and Stats in process.
func WithoutControl() Option { return func(c *config) { c.off = true } }

// Service is a served service instance with its control plane. Stop it
// to stop serving; it implements broker.Subscription.
type Service struct {
	cfg     config
	subject string
	queue   string
	name    string
	h       broker.Handler
	meter   *meter
	schemas schemas

	draining atomic.Bool
	main     broker.Subscription
	control  []broker.Subscription
	stopOnce sync.Once
	stopErr  error
}

var _ broker.Subscription = (*Service)(nil)

// ErrInvalidID is returned by Serve for an instance ID that cannot be a
// subject token.
var ErrInvalidID = errors.New("control: invalid instance ID")

// Serve serves h on subject with b, as b.Serve(subject, h) does, counting
// every call by method, and answers PING, INFO and STATS for it on the
// control subjects (see Subject) of every broker that implements
// broker.Broadcaster. On a broker without that ability the service is
// served without a control plane.
func Serve(b broker.Broker, subject string, h broker.Handler, opts ...Option) (*Service, error) {
	cfg := config{version: "0.0.0"}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.id == "" {
		cfg.id = rand.Text()
	} else if Name(cfg.id) != cfg.id {
		return nil, fmt.Errorf("%w %q: letters, digits, '-' and '_' only", ErrInvalidID, cfg.id)
	}
	s := &Service{
		cfg:     cfg,
		subject: subject,
		queue:   broker.NewServeConfig(subject, cfg.serve...).Queue,
		name:    Name(subject),
		h:       h,
		meter:   newMeter(h),
	}
	main, err := b.Serve(subject, s.meter, cfg.serve...)
	if err != nil {
		return nil, err
	}
	s.main = main
	bc, ok := b.(broker.Broadcaster)
	if cfg.off || !ok {
		return s, nil
	}
	for _, verb := range []Verb{Ping, Info, Stats} {
		answer := s.answerer(verb)
		for _, subj := range []string{Subject(verb, "", ""), Subject(verb, s.name, ""), Subject(verb, s.name, cfg.id)} {
			sub, err := bc.ServeEach(subj, answer, broker.WithConcurrency(4))
			if err != nil {
				err = fmt.Errorf("control: serve %s: %w", subj, err)
				return nil, errors.Join(err, s.Stop(context.Background()))
			}
			s.control = append(s.control, sub)
		}
	}
	return s, nil
}

func (s *Service) answerer(verb Verb) broker.Handler {
	return broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		var v any
		switch verb {
		case Ping:
			v = s.Ping()
		case Info:
			v = s.Info()
		default:
			v = s.Stats()
		}
		body, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		return &broker.Message{Header: broker.Header{broker.HeaderContentType: "application/json"}, Body: body}, nil
	})
}

// ID returns the instance ID.
func (s *Service) ID() string { return s.cfg.id }

// Status returns the instance's health: Serving, or NotServing once Stop
// began.
func (s *Service) Status() string {
	if s.draining.Load() {
		return NotServing
	}
	return Serving
}

func (s *Service) identity() Identity {
	return Identity{Name: s.name, ID: s.cfg.id, Version: s.cfg.version, Metadata: maps.Clone(s.cfg.metadata)}
}

func (s *Service) methods() []Method {
	ms := append([]Method(nil), s.cfg.methods...)
	if d, ok := s.h.(Describer); ok {
		ms = append(ms, d.Describe()...)
	}
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	return ms
}

// Ping returns the instance's PING answer.
func (s *Service) Ping() PingResponse {
	return PingResponse{Identity: s.identity(), Type: PingResponseType, Status: s.Status()}
}

// Info returns the instance's INFO answer.
func (s *Service) Info() InfoResponse {
	ms := s.methods()
	eps := make([]EndpointInfo, 0, len(ms))
	for _, m := range ms {
		ep := EndpointInfo{
			Name: m.Name, Subject: s.subject, QueueGroup: s.queue, Metadata: maps.Clone(m.Metadata),
			RequestType: m.RequestType, ReplyType: m.ReplyType,
			RequestSchema: m.RequestSchema, ReplySchema: m.ReplySchema,
		}
		if m.Request != nil {
			ep.RequestType = typeName(m.Request)
			if ep.RequestSchema == nil {
				ep.RequestSchema = s.schemas.of(m.Request)
			}
		}
		if m.Reply != nil {
			ep.ReplyType = typeName(m.Reply)
			if ep.ReplySchema == nil {
				ep.ReplySchema = s.schemas.of(m.Reply)
			}
		}
		eps = append(eps, ep)
	}
	info := InfoResponse{
		Identity: s.identity(), Type: InfoResponseType, Description: s.cfg.description,
		Endpoints: eps, Subject: s.subject, Status: s.Status(),
	}
	if c, ok := s.h.(interface{ Codecs() []string }); ok {
		info.Codecs = c.Codecs()
	}
	return info
}

// Stats returns the instance's STATS answer: the counters of every
// described method and of every method name requests carried.
func (s *Service) Stats() StatsResponse {
	ms := s.methods()
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.Name
	}
	return StatsResponse{
		Identity: s.identity(), Type: StatsResponseType, Started: s.meter.started,
		Endpoints: s.meter.snapshot(s.subject, s.queue, names), Status: s.Status(),
	}
}

// Stop turns the instance NOT_SERVING at once, so health checks see it
// drain, then stops the service as broker.Subscription.Stop does
// (draining the requests in flight until ctx ends) and last the control
// plane, which answers while the service drains. Stop is idempotent.
func (s *Service) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.draining.Store(true)
		var errs []error
		if err := s.main.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
		for _, c := range s.control {
			if err := c.Stop(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}
