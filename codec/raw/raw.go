// Package raw is the pass-through codec (application/octet-stream): a body
// is the bytes themselves. It carries payloads that are already encoded (a
// gateway forwarding requests, files, a format mqrpc has no codec for)
// through ordinary calls:
//
//	client := rpc.NewClient(b, rpc.WithCodec(raw.Codec{}))
//	var out []byte
//	err := client.Call(ctx, "Files", "Put", data, &out)
//
// and on the server rpc.HandleRaw, or rpc.Handle with []byte as the request
// and reply types and raw.Codec among the server's codecs.
package raw

import "github.com/mqrpc/mqrpc/codec"

// Name is the media type of this codec.
const Name = "application/octet-stream"

// Codec is the pass-through codec. The zero value is ready to use.
type Codec struct{}

var _ codec.Codec = Codec{}

// Name returns "application/octet-stream".
func (Codec) Name() string { return Name }

// Marshal returns the bytes of v, a []byte, *[]byte, string or *string. A
// []byte is not copied: the body is the caller's slice, so the caller must
// not change it while the call (for a one-way call, its delivery) may still
// read it.
func (Codec) Marshal(v any) ([]byte, error) {
	switch x := v.(type) {
	case []byte:
		return x, nil
	case *[]byte:
		if x != nil {
			return *x, nil
		}
		return nil, nil
	case string:
		return []byte(x), nil
	case *string:
		if x != nil {
			return []byte(*x), nil
		}
		return nil, nil
	}
	return nil, codec.UnsupportedTypeError(Name, v)
}

// Unmarshal copies data into v, a *[]byte (reusing the capacity it has) or
// a *string.
func (Codec) Unmarshal(data []byte, v any) error {
	switch x := v.(type) {
	case *[]byte:
		if x != nil {
			*x = append((*x)[:0], data...)
			return nil
		}
	case *string:
		if x != nil {
			*x = string(data)
			return nil
		}
	}
	return codec.UnsupportedTypeError(Name, v)
}
