package jsonrpc

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
)

// ServiceDescription is the result of the system.describe method, in the
// shape of the RabbitMQ Java client's com.rabbitmq.tools.jsonrpc
// ServiceDescription, which its JsonRpcClient reads when it starts.
type ServiceDescription struct {
	Name    string                 `json:"name"`
	ID      string                 `json:"id"`
	Version string                 `json:"version"`
	Summary string                 `json:"summary"`
	Help    string                 `json:"help"`
	Procs   []ProcedureDescription `json:"procs"`
}

// ProcedureDescription describes one method in a ServiceDescription.
type ProcedureDescription struct {
	Name       string `json:"name"`
	Summary    string `json:"summary"`
	Help       string `json:"help"`
	Idempotent bool   `json:"idempotent"`
	// Params are the positional parameters; the Java client finds a
	// procedure by name and number of parameters.
	Params []ParameterDescription `json:"params"`
	// Return is the JSON type of the result: "bit", "num", "str", "arr",
	// "obj", "any" or "nil".
	Return string `json:"return"`
	// JavaReturnType is the Java type the Java client converts the
	// result to ("int", "long", "double", "boolean", "void",
	// "java.lang.String", "java.util.List", "java.util.Map",
	// "java.lang.Object"). The Java client needs it.
	JavaReturnType string `json:"javaReturnType"`
}

// ParameterDescription describes one parameter of a procedure.
type ParameterDescription struct {
	Name string `json:"name"`
	// Type is the JSON type: "bit", "num", "str", "arr", "obj" or "any".
	Type string `json:"type"`
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

// jsonType returns the JSON-RPC 1.1 type name of t.
func jsonType(t reflect.Type) string {
	if t == nil {
		return "nil"
	}
	if t == rawMessageType {
		return "any"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "bit"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return "num"
	case reflect.String:
		return "str"
	case reflect.Slice, reflect.Array:
		return "arr"
	case reflect.Map:
		return "obj"
	case reflect.Struct:
		if t.NumField() == 0 {
			return "nil"
		}
		return "obj"
	}
	return "any"
}

// javaType returns the Java type the RabbitMQ Java client should convert a
// value of Go type t to.
func javaType(t reflect.Type) string {
	if t == nil {
		return "void"
	}
	if t == rawMessageType {
		return "java.lang.Object"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "boolean"
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint8, reflect.Uint16:
		return "int"
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Uint64:
		return "long"
	case reflect.Float32, reflect.Float64:
		return "double"
	case reflect.String:
		return "java.lang.String"
	case reflect.Slice, reflect.Array:
		return "java.util.List"
	case reflect.Map:
		return "java.util.Map"
	case reflect.Struct:
		if t.NumField() == 0 {
			return "void"
		}
		return "java.util.Map"
	}
	return "java.lang.Object"
}

// paramShape is how positional params map onto a Go params type, worked
// out once per method.
type paramShape struct {
	kind   reflect.Kind // of the params type, pointers removed
	fields [][]int      // struct: the field index of each position
	params []ParameterDescription
}

func shapeOf(t reflect.Type) paramShape {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	s := paramShape{kind: t.Kind()}
	switch {
	case t == rawMessageType, t.Kind() == reflect.Interface, t.Kind() == reflect.Slice, t.Kind() == reflect.Map:
		// Any number of params: nothing to describe.
	case t.Kind() == reflect.Array:
		for i := 0; i < t.Len(); i++ {
			s.params = append(s.params, ParameterDescription{Name: "param" + strconv.Itoa(i), Type: jsonType(t.Elem())})
		}
	case t.Kind() == reflect.Struct:
		for _, f := range reflect.VisibleFields(t) {
			if !f.IsExported() || f.Anonymous {
				continue
			}
			name := f.Name
			if tag, ok := f.Tag.Lookup("json"); ok {
				n, _, _ := strings.Cut(tag, ",")
				if n == "-" {
					continue
				}
				if n != "" {
					name = n
				}
			}
			s.fields = append(s.fields, f.Index)
			s.params = append(s.params, ParameterDescription{Name: name, Type: jsonType(f.Type)})
		}
	default: // one scalar param
		s.params = []ParameterDescription{{Name: "param0", Type: jsonType(t)}}
	}
	return s
}
