package proto_test

import (
	"fmt"

	"google.golang.org/protobuf/types/known/wrapperspb"

	protocodec "github.com/mqrpc/mqrpc/codec/proto"
)

func ExampleCodec() {
	var c protocodec.Codec
	b, _ := c.Marshal(wrapperspb.String("hi"))
	var s wrapperspb.StringValue
	_ = c.Unmarshal(b, &s)
	_, err := c.Marshal("not a proto.Message")
	fmt.Println(c.Name(), b, s.GetValue())
	fmt.Println(err)
	// Output:
	// application/protobuf [10 2 104 105] hi
	// codec: unsupported type: application/protobuf cannot encode string
}
