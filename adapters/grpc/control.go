package grpc

import (
	"encoding/json"
	"sort"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/mqrpc/mqrpc/rpc/control"
)

var _ control.Describer = (*Server)(nil)

// Describe lists the methods of every registered service for the control
// plane's INFO (package rpc/control), so a Server served with
// control.Serve shows them to `mqrpc info` and `nats micro info`: the name
// as requests carry it ("/helloworld.Greeter/SayHello"), the request and
// reply message names, and their descriptors (google.protobuf.DescriptorProto
// in JSON) as schemas. Types and descriptors come from the global proto
// registry, where generated code registers its files; a service missing
// from it is listed with method names only. Streaming methods carry the
// metadata "streaming": "client", "server" or "bidi".
func (s *Server) Describe() []control.Method {
	var out []control.Method
	for name, info := range s.GetServiceInfo() {
		var sd protoreflect.ServiceDescriptor
		if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
			sd, _ = d.(protoreflect.ServiceDescriptor)
		}
		for _, mi := range info.Methods {
			m := control.Method{Name: "/" + name + "/" + mi.Name}
			switch {
			case mi.IsClientStream && mi.IsServerStream:
				m.Metadata = map[string]string{"streaming": "bidi"}
			case mi.IsClientStream:
				m.Metadata = map[string]string{"streaming": "client"}
			case mi.IsServerStream:
				m.Metadata = map[string]string{"streaming": "server"}
			}
			if sd != nil {
				if md := sd.Methods().ByName(protoreflect.Name(mi.Name)); md != nil {
					m.RequestType, m.RequestSchema = string(md.Input().FullName()), descriptorJSON(md.Input())
					m.ReplyType, m.ReplySchema = string(md.Output().FullName()), descriptorJSON(md.Output())
				}
			}
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func descriptorJSON(md protoreflect.MessageDescriptor) json.RawMessage {
	b, err := protojson.Marshal(protodesc.ToDescriptorProto(md))
	if err != nil {
		return nil
	}
	return b
}
