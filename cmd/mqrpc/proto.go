package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/mqrpc/mqrpc/broker"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// protoMethod is a gRPC method known from its INFO: the full method name
// the request carries and the message types built from the descriptors.
type protoMethod struct {
	name       string
	req, reply protoreflect.MessageType
}

// findProtoMethod finds method in info and, when it is a gRPC method with
// message descriptors (adapters/grpc), builds its request and reply types.
// It returns nil when it has none.
func findProtoMethod(info *control.InfoResponse, method string) (*protoMethod, error) {
	if info == nil {
		return nil, nil
	}
	for _, ep := range info.Endpoints {
		if ep.Name != method && !strings.HasSuffix(ep.Name, "/"+method) {
			continue
		}
		if ep.RequestType == "" || !isDescriptor(ep.RequestSchema) || !isDescriptor(ep.ReplySchema) {
			return nil, nil
		}
		req, err := messageType(ep.RequestType, ep.RequestSchema)
		if err != nil {
			return nil, fail(rpc.Internal, "request type of %s: %v", ep.Name, err)
		}
		reply, err := messageType(ep.ReplyType, ep.ReplySchema)
		if err != nil {
			return nil, fail(rpc.Internal, "reply type of %s: %v", ep.Name, err)
		}
		return &protoMethod{name: ep.Name, req: req, reply: reply}, nil
	}
	return nil, nil
}

// isDescriptor tells a DescriptorProto in JSON from a JSON Schema.
func isDescriptor(b json.RawMessage) bool {
	var v struct {
		Schema string `json:"$schema"`
		Name   string `json:"name"`
	}
	return json.Unmarshal(b, &v) == nil && v.Schema == "" && v.Name != ""
}

// messageType builds the message type fullName from its descriptor,
// resolving the types it refers to among those linked into this program
// (the well-known types).
func messageType(fullName string, desc json.RawMessage) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(fullName)); err == nil {
		return mt, nil
	}
	dp := new(descriptorpb.DescriptorProto)
	if err := protojson.Unmarshal(desc, dp); err != nil {
		return nil, err
	}
	pkg := ""
	if i := strings.LastIndexByte(fullName, '.'); i > 0 {
		pkg = fullName[:i]
	}
	var deps []string
	seen := map[string]bool{}
	var walk func(*descriptorpb.DescriptorProto)
	walk = func(d *descriptorpb.DescriptorProto) {
		for _, f := range d.GetField() {
			if tn := strings.TrimPrefix(f.GetTypeName(), "."); tn != "" {
				if fd, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(tn)); err == nil {
					if p := fd.ParentFile().Path(); !seen[p] {
						seen[p] = true
						deps = append(deps, p)
					}
				}
			}
		}
		for _, n := range d.GetNestedType() {
			walk(n)
		}
	}
	walk(dp)
	fdp := &descriptorpb.FileDescriptorProto{
		Name:        proto.String("mqrpc-cli/" + fullName + ".proto"),
		Package:     proto.String(pkg),
		Dependency:  deps,
		MessageType: []*descriptorpb.DescriptorProto{dp},
		Syntax:      proto.String("proto3"),
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		return nil, err
	}
	md := fd.Messages().Get(0)
	return dynamicpb.NewMessageType(md), nil
}

// protoCall is a call of a gRPC method: JSON converted to protobuf with
// the method's descriptors, and the reply back.
type protoCall struct {
	client *rpc.Client
	t      *target
	m      *protoMethod
	req    []byte
	opts   []rpc.CallOption
}

func newProtoCall(b broker.Broker, t *target, m *protoMethod) (*protoCall, error) {
	in := m.req.New().Interface()
	if err := protojson.Unmarshal(t.body, in); err != nil {
		return nil, fail(rpc.InvalidArgument, "request is not a %s in JSON: %v; nothing was sent", m.req.Descriptor().FullName(), err)
	}
	body, err := proto.Marshal(in)
	if err != nil {
		return nil, fail(rpc.InvalidArgument, "encode %s: %v", m.req.Descriptor().FullName(), err)
	}
	c := &protoCall{client: rpc.NewClient(b), t: t, m: m, req: body,
		opts: []rpc.CallOption{rpc.WithCallCodec(wire(protocodec.Name))}}
	for k, v := range t.header {
		c.opts = append(c.opts, rpc.WithHeader(k, v))
	}
	return c, nil
}

func (c *protoCall) call(ctx context.Context) ([]byte, error) {
	var out []byte
	if err := c.client.Call(ctx, c.t.service, c.m.name, c.req, &out, c.opts...); err != nil {
		return nil, err
	}
	reply := c.m.reply.New().Interface()
	if err := proto.Unmarshal(out, reply); err != nil {
		return nil, fmt.Errorf("reply is not a %s: %w", c.m.reply.Descriptor().FullName(), err)
	}
	return protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(reply)
}
