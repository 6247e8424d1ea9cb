package rpc

import (
	"reflect"
	"sort"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/codec"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// Serve serves s on subject with b, as b.Serve(subject, s) does, with the
// control plane on: the instance answers discovery, health and statistics
// requests (PING, INFO with every method's request and reply types and
// their JSON Schemas, STATS), which cmd/mqrpc and, on NATS, natscli's
// `nats micro` show. control.WithoutControl() turns it off;
// control.WithServeOptions passes broker serve options. Stop the returned
// service to drain it: it reports NOT_SERVING from the moment Stop is
// called.
func (s *Server) Serve(b broker.Broker, subject string, opts ...control.Option) (*control.Service, error) {
	return control.Serve(b, subject, s, opts...)
}

// Describe lists the registered methods with the Go types of typed
// handlers (HandleRaw methods have none), for the control plane's INFO.
func (s *Server) Describe() []control.Method {
	names := s.Methods()
	out := make([]control.Method, len(names))
	for i, n := range names {
		out[i] = control.Method{Name: n}
		if v, ok := s.types.Load(n); ok {
			t := v.([2]reflect.Type)
			out[i].Request, out[i].Reply = t[0], t[1]
		}
	}
	return out
}

var _ control.Describer = (*Server)(nil)

// noteTypes remembers the request and reply types of a method Handle
// registered (err == nil), and returns err.
func (s *Server) noteTypes(name string, req, res reflect.Type, err error) error {
	if err == nil {
		s.types.Store(name, [2]reflect.Type{req, res})
	}
	return err
}

// Codecs returns the content types s accepts, the default one (for
// requests without a content-type) first, for the control plane's INFO.
func (s *Server) Codecs() []string {
	out := []string{s.defaultCodec.Name()}
	for name := range s.codecs {
		if name != codec.MediaType(out[0]) {
			out = append(out, name)
		}
	}
	sort.Strings(out[1:])
	return out
}
