package thrift

import (
	"sort"

	"github.com/mqrpc/mqrpc/rpc/control"
)

var _ control.Describer = (*Server)(nil)

// Describe lists the methods of the processor (its ProcessorMap: the
// method names requests carry) for the control plane's INFO (package
// rpc/control), so a Server served with control.Serve shows them to
// `mqrpc info` and `nats micro info`. Thrift's generated code keeps its
// argument types to itself: methods are listed by name only.
func (s *Server) Describe() []control.Method {
	pm := s.processor.ProcessorMap()
	names := make([]string, 0, len(pm))
	for n := range pm {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]control.Method, len(names))
	for i, n := range names {
		out[i] = control.Method{Name: n, Metadata: map[string]string{"protocol": "thrift"}}
	}
	return out
}
