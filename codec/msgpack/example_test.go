package msgpack_test

import (
	"fmt"

	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
)

type point struct{ X, Y int }

func ExampleCodec() {
	var c msgpackcodec.Codec
	b, _ := c.Marshal(point{X: 1, Y: 2})
	var p point
	_ = c.Unmarshal(b, &p)
	fmt.Printf("%s %d bytes %v\n", c.Name(), len(b), p)
	// Output: application/msgpack 7 bytes {1 2}
}
