package grpc

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/codec"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	"github.com/mqrpc/mqrpc/rpc"
)

// TrailerPrefix starts the reply header names that carry trailer
// metadata: trailer key "k" travels as "grpc-trailer-k". The other header
// names are mqrpc's own (mqrpc-method, content-type, mqrpc-status,
// mqrpc-message, mqrpc-details).
const TrailerPrefix = "grpc-trailer-"

// headerMarker, on a server's first stream message, says that the
// message's other headers are the stream's header metadata (which the end
// of the stream repeats). Reserved: never a metadata key.
const headerMarker = "grpc-header"

// Content types of the gRPC mapping.
const (
	// ContentTypeProto is the content type of protobuf bodies, the same as
	// mqrpc's codec/proto.
	ContentTypeProto = protocodec.Name
	// ContentTypeGRPCPrefix followed by a gRPC content subtype ("json")
	// names a body encoded with the gRPC codec of that name.
	ContentTypeGRPCPrefix = "application/grpc+"
)

// reserved reports whether a metadata key must not travel as a header of
// its own: it would clash with the protocol.
func reserved(key string) bool {
	return key == broker.HeaderContentType ||
		strings.HasPrefix(key, "mqrpc-") ||
		strings.HasPrefix(key, "grpc-") ||
		strings.HasPrefix(key, ":")
}

// putMetadata writes md into h, each key prefixed by prefix, skipping
// reserved keys.
func putMetadata(h broker.Header, md metadata.MD, prefix string) {
	for k, vs := range md {
		k = strings.ToLower(k)
		if len(vs) == 0 || reserved(k) {
			continue
		}
		if strings.HasSuffix(k, "-bin") {
			enc := make([]string, len(vs))
			for i, v := range vs {
				enc[i] = base64.RawStdEncoding.EncodeToString([]byte(v))
			}
			h[prefix+k] = strings.Join(enc, ",")
			continue
		}
		h[prefix+k] = strings.Join(vs, ", ")
	}
}

// metadataValues decodes one header value of key.
func metadataValues(key, value string) ([]string, error) {
	if !strings.HasSuffix(key, "-bin") {
		return []string{value}, nil
	}
	parts := strings.Split(value, ",")
	out := make([]string, len(parts))
	for i, p := range parts {
		b, err := decodeBase64(strings.TrimSpace(p))
		if err != nil {
			return nil, fmt.Errorf("malformed binary metadata %s: %w", key, err)
		}
		out[i] = string(b)
	}
	return out, nil
}

func decodeBase64(s string) ([]byte, error) {
	if len(s)%4 == 0 {
		if b, err := base64.StdEncoding.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// requestMetadata returns the metadata a request's headers carry.
func requestMetadata(h broker.Header) (metadata.MD, error) {
	md := make(metadata.MD, len(h))
	for k, v := range h {
		k = strings.ToLower(k)
		if reserved(k) {
			continue
		}
		vs, err := metadataValues(k, v)
		if err != nil {
			return nil, err
		}
		md[k] = append(md[k], vs...)
	}
	return md, nil
}

// replyMetadata splits a reply's headers into header and trailer metadata.
func replyMetadata(h broker.Header) (header, trailer metadata.MD, err error) {
	header, trailer = metadata.MD{}, metadata.MD{}
	for k, v := range h {
		k = strings.ToLower(k)
		md := header
		if name, ok := strings.CutPrefix(k, TrailerPrefix); ok {
			md, k = trailer, name
		} else if reserved(k) {
			continue
		}
		vs, err := metadataValues(k, v)
		if err != nil {
			return nil, nil, err
		}
		md[k] = append(md[k], vs...)
	}
	return header, trailer, nil
}

// statusOf returns the gRPC status a server handler's error stands for.
func statusOf(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	var e *rpc.Error
	if errors.As(err, &e) {
		p := &spb.Status{Code: int32(e.Code()), Message: e.Message()}
		p.Details = anyDetails(e.Details())
		return status.FromProto(p)
	}
	return status.New(codes.Code(rpc.CodeOf(err)), err.Error())
}

// anyDetails returns mqrpc error details as the Any messages of a gRPC
// status. Any has no content type: a detail not in protobuf keeps its
// bytes, which the client's status.Details reports as undecodable.
func anyDetails(details []rpc.ErrorDetail) []*anypb.Any {
	if len(details) == 0 {
		return nil
	}
	out := make([]*anypb.Any, len(details))
	for i, d := range details {
		out[i] = &anypb.Any{TypeUrl: d.Type, Value: d.Value}
	}
	return out
}

// rpcDetails returns the details of a gRPC status as mqrpc error details
// in protobuf.
func rpcDetails(details []*anypb.Any) []rpc.ErrorDetail {
	if len(details) == 0 {
		return nil
	}
	out := make([]rpc.ErrorDetail, len(details))
	for i, a := range details {
		out[i] = rpc.ErrorDetail{Type: a.GetTypeUrl(), ContentType: ContentTypeProto, Value: a.GetValue()}
	}
	return out
}

// putStatus writes st (not OK) into h as mqrpc's status headers: its
// details become mqrpc error details, so mqrpc clients read them too.
func putStatus(h broker.Header, st *status.Status) {
	var msg error
	if m := st.Message(); m != "" {
		msg = errors.New(m)
	}
	delete(h, broker.HeaderStatusMessage)
	e := rpc.NewError(rpc.Code(st.Code()), msg).WithDetails(rpcDetails(st.Proto().GetDetails())...)
	for k, v := range rpc.ErrorReply(e).Header {
		h[k] = v
	}
}

// Error is the error a ClientConn returns for a failed call. It carries a
// gRPC status (GRPCStatus, so status.Code and status.FromError work) and
// unwraps to the mqrpc error it was made from (an *rpc.Error), so
// rpc.CodeOf and errors.Is with broker sentinels work too.
type Error struct {
	st  *status.Status
	err error
}

// GRPCStatus returns the gRPC status of the failed call.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// Error returns the message in gRPC's format: "rpc error: code = ... desc = ...".
func (e *Error) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", e.st.Code(), e.st.Message())
}

// Unwrap returns the mqrpc error.
func (e *Error) Unwrap() error { return e.err }

// callError turns the error of an mqrpc call into a gRPC status error,
// with its details.
func callError(err error) error {
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	var e *rpc.Error
	if !errors.As(err, &e) {
		return &Error{st: status.New(codes.Code(rpc.CodeOf(err)), err.Error()), err: err}
	}
	p := &spb.Status{Code: int32(e.Code()), Message: e.Message(), Details: anyDetails(e.Details())}
	return &Error{st: status.FromProto(p), err: err}
}

// grpcCodec is a gRPC encoding.CodecV2 as an mqrpc codec.
type grpcCodec struct {
	name string // content type
	c    encoding.CodecV2
}

func (g grpcCodec) Name() string { return g.name }

func (g grpcCodec) Marshal(v any) ([]byte, error) {
	bs, err := g.c.Marshal(v)
	if err != nil {
		return nil, err
	}
	b := bs.Materialize()
	bs.Free()
	return b, nil
}

func (g grpcCodec) Unmarshal(data []byte, v any) error {
	return g.c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, v)
}

// codecV1 is a gRPC encoding.Codec (the older interface) as an mqrpc codec.
type codecV1 struct {
	name string
	c    encoding.Codec
}

func (g codecV1) Name() string                       { return g.name }
func (g codecV1) Marshal(v any) ([]byte, error)      { return g.c.Marshal(v) }
func (g codecV1) Unmarshal(data []byte, v any) error { return g.c.Unmarshal(data, v) }

var (
	_ codec.Codec = grpcCodec{}
	_ codec.Codec = codecV1{}
)

// isProto reports whether a content subtype or media type means protobuf.
func isProtoSubtype(sub string) bool { return sub == "" || sub == "proto" }

// serverCodec returns the codec of a request's content type.
func serverCodec(contentType string) (codec.Codec, bool) {
	mt := codec.MediaType(contentType)
	switch mt {
	case "", ContentTypeProto, "application/x-protobuf", "application/grpc", "application/grpc+proto":
		return protocodec.Codec{}, true
	}
	sub, ok := strings.CutPrefix(mt, ContentTypeGRPCPrefix)
	if !ok {
		return nil, false
	}
	c := encoding.GetCodecV2(sub)
	if c == nil {
		return nil, false
	}
	return grpcCodec{name: mt, c: c}, true
}
