package json_test

import (
	"fmt"

	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
)

type point struct{ X, Y int }

func ExampleCodec() {
	var c jsoncodec.Codec
	b, _ := c.Marshal(point{X: 1, Y: 2})
	var p point
	_ = c.Unmarshal(b, &p)
	var empty point
	err := c.Unmarshal(nil, &empty) // an empty body is the zero value
	fmt.Println(c.Name(), string(b), p, empty, err)
	// Output: application/json {"X":1,"Y":2} {1 2} {0 0} <nil>
}
