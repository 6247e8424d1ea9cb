package codec_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqrpc/mqrpc/codec"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	rawcodec "github.com/mqrpc/mqrpc/codec/raw"
)

type sample struct {
	Name  string
	N     int
	Tags  []string
	Bytes []byte
	Inner *sample
}

func TestRoundTrip(t *testing.T) {
	in := &sample{Name: "héllo", N: -42, Tags: []string{"a", ""}, Bytes: []byte{0, 255}, Inner: &sample{N: 1}}
	for _, c := range []codec.Codec{jsoncodec.Codec{}, msgpackcodec.Codec{}} {
		t.Run(c.Name(), func(t *testing.T) {
			b, err := c.Marshal(in)
			require.NoError(t, err)
			var out sample
			require.NoError(t, c.Unmarshal(b, &out))
			assert.Equal(t, *in, out)
			var empty sample
			require.NoError(t, c.Unmarshal(nil, &empty), "an empty body decodes as the zero value")
			assert.Equal(t, sample{}, empty)
		})
	}
	t.Run(protocodec.Name, func(t *testing.T) {
		c := protocodec.Codec{}
		in, err := structpb.NewStruct(map[string]any{"a": 1.5, "b": "x"})
		require.NoError(t, err)
		b, err := c.Marshal(in)
		require.NoError(t, err)
		out := &structpb.Struct{}
		require.NoError(t, c.Unmarshal(b, out))
		assert.Equal(t, in.AsMap(), out.AsMap())
	})
}

// TestMarshalAppend: a codec.Appender appends to dst exactly what Marshal
// returns (the wire is the same whichever a stream uses), keeping what
// dst held, and refuses what Marshal refuses.
func TestMarshalAppend(t *testing.T) {
	for _, tc := range []struct {
		c   codec.Codec
		v   any
		bad any
	}{
		{jsoncodec.Codec{}, &sample{Name: "<héllo>&", N: 7, Tags: []string{"a"}, Bytes: []byte{1, 2}, Inner: &sample{}}, make(chan int)},
		{msgpackcodec.Codec{}, &sample{Name: "héllo", N: 7, Tags: []string{"a"}, Bytes: []byte{1, 2}, Inner: &sample{}}, make(chan int)},
		{protocodec.Codec{}, wrapperspb.Bytes(make([]byte, 300)), &sample{}},
	} {
		t.Run(tc.c.Name(), func(t *testing.T) {
			ap, ok := tc.c.(codec.Appender)
			require.True(t, ok)
			want, err := tc.c.Marshal(tc.v)
			require.NoError(t, err)
			for _, dst := range [][]byte{nil, []byte("prefix"), make([]byte, 3, 1024)} {
				prefix := string(dst)
				got, err := ap.MarshalAppend(dst, tc.v)
				require.NoError(t, err)
				assert.Equal(t, prefix, string(got[:len(prefix)]))
				assert.Equal(t, want, got[len(prefix):])
			}
			_, err = ap.MarshalAppend(nil, tc.bad)
			require.Error(t, err)
			got, err := ap.MarshalAppend(nil, tc.v) // a pooled encoder is fine after an error
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

func TestRawPassesBytesThrough(t *testing.T) {
	c := rawcodec.Codec{}
	in := []byte{0, 1, 0xff}
	b, err := c.Marshal(in)
	require.NoError(t, err)
	assert.Equal(t, in, b)
	for _, v := range []any{&in, "\x00\x01\xff", ptr("\x00\x01\xff")} {
		b, err := c.Marshal(v)
		require.NoError(t, err, "%T", v)
		assert.Equal(t, in, b, "%T", v)
	}

	buf := make([]byte, 0, 16)
	require.NoError(t, c.Unmarshal(in, &buf))
	assert.Equal(t, in, buf)
	in[0] = 9
	assert.Equal(t, byte(0), buf[0], "Unmarshal copies: a broker may reuse the body")
	var s string
	require.NoError(t, c.Unmarshal([]byte("hi"), &s))
	assert.Equal(t, "hi", s)
	var empty []byte
	require.NoError(t, c.Unmarshal(nil, &empty))
	assert.Empty(t, empty)

	_, err = c.Marshal(&sample{})
	assert.ErrorIs(t, err, codec.ErrUnsupported)
	assert.ErrorIs(t, c.Unmarshal(in, &sample{}), codec.ErrUnsupported)
	assert.ErrorIs(t, c.Unmarshal(in, (*[]byte)(nil)), codec.ErrUnsupported)
}

func ptr[T any](v T) *T { return &v }

func TestProtoRefusesNonProto(t *testing.T) {
	c := protocodec.Codec{}
	_, err := c.Marshal(&sample{})
	assert.ErrorIs(t, err, codec.ErrUnsupported)
	assert.ErrorIs(t, c.Unmarshal([]byte{1}, &sample{}), codec.ErrUnsupported)
	assert.Contains(t, err.Error(), "*codec_test.sample")
}

func TestGarbageIsAnError(t *testing.T) {
	garbage := []byte{0xc1, 0xff, '{', 0x00}
	var s sample
	assert.Error(t, jsoncodec.Codec{}.Unmarshal(garbage, &s))
	assert.Error(t, msgpackcodec.Codec{}.Unmarshal(garbage, &s))
	assert.Error(t, protocodec.Codec{}.Unmarshal([]byte{0xff, 0xff, 0xff}, &wrapperspb.StringValue{}))
}

func TestMediaType(t *testing.T) {
	assert.Equal(t, "application/json", codec.MediaType("Application/JSON; charset=utf-8"))
	assert.Equal(t, "application/msgpack", codec.MediaType(" application/msgpack "))
	assert.Equal(t, "", codec.MediaType(""))
}

// The decoders take untrusted bytes off the wire: they must return an
// error, never panic, whatever they are given.
func FuzzJSON(f *testing.F)    { fuzzCodec(f, jsoncodec.Codec{}) }
func FuzzMsgpack(f *testing.F) { fuzzCodec(f, msgpackcodec.Codec{}) }

func fuzzCodec(f *testing.F, c codec.Codec) {
	seed, _ := c.Marshal(&sample{Name: "seed", N: 7, Tags: []string{"x"}, Bytes: []byte{1}, Inner: &sample{}})
	f.Add(seed)
	f.Add([]byte{})
	f.Add([]byte("null"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s sample
		if err := c.Unmarshal(data, &s); err != nil {
			return
		}
		// What decodes must encode again.
		if _, err := c.Marshal(&s); err != nil {
			t.Fatalf("decoded %q but cannot re-encode: %v", data, err)
		}
	})
}

func FuzzProto(f *testing.F) {
	c := protocodec.Codec{}
	st, _ := structpb.NewStruct(map[string]any{"k": []any{1.0, "v", true, nil}})
	seed, _ := c.Marshal(st)
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		out := &structpb.Struct{}
		if err := c.Unmarshal(data, out); err != nil {
			return
		}
		if _, err := c.Marshal(out); err != nil {
			t.Fatalf("decoded but cannot re-encode: %v", err)
		}
	})
}

// BenchmarkMarshal compares Marshal with MarshalAppend into a reused
// buffer, as a stream encodes its messages (64 bytes of data).
func BenchmarkMarshal(b *testing.B) {
	type echo struct {
		Data []byte `json:"d" msgpack:"d"`
	}
	for _, tc := range []struct {
		c codec.Codec
		v any
	}{
		{jsoncodec.Codec{}, &echo{Data: make([]byte, 64)}},
		{msgpackcodec.Codec{}, &echo{Data: make([]byte, 64)}},
		{protocodec.Codec{}, wrapperspb.Bytes(make([]byte, 64))},
	} {
		b.Run(tc.c.Name()+"/Marshal", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tc.c.Marshal(tc.v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.c.Name()+"/MarshalAppend", func(b *testing.B) {
			ap := tc.c.(codec.Appender)
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = ap.MarshalAppend(buf[:0], tc.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
