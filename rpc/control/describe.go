package control

import (
	"encoding/json"
	"reflect"
	"sync"

	"github.com/invopop/jsonschema"
)

// Method describes one method of a service, for INFO.
type Method struct {
	// Name is the method name.
	Name string
	// Request and Reply are the Go types a typed handler decodes and
	// encodes (nil for a raw handler). INFO names them and gives their
	// JSON Schemas.
	Request, Reply reflect.Type
	// RequestType and ReplyType name the request and reply for handlers
	// without Go types (a Thrift or gRPC method: the IDL's type names);
	// ignored when Request or Reply is set.
	RequestType, ReplyType string
	// RequestSchema and ReplySchema, when set, are given instead of the
	// schemas made from Request and Reply (a gRPC adapter can give a
	// proto descriptor as JSON here).
	RequestSchema, ReplySchema json.RawMessage
	// Metadata annotates the method.
	Metadata map[string]string
}

// Describer is implemented by handlers that can list their methods
// (rpc.Server does). Serve asks at every INFO and STATS request, so
// methods registered while serving show up.
type Describer interface {
	Describe() []Method
}

// schemas makes JSON Schemas from Go types, once per type.
type schemas struct {
	mu    sync.Mutex
	cache map[reflect.Type]json.RawMessage
}

func (s *schemas) of(t reflect.Type) json.RawMessage {
	if t == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.cache[t]; ok {
		return b
	}
	if s.cache == nil {
		s.cache = make(map[reflect.Type]json.RawMessage)
	}
	b, err := reflectSchema(t)
	if err != nil {
		b = nil // a type the reflector cannot describe: no schema
	}
	s.cache[t] = b
	return b
}

func reflectSchema(t reflect.Type) (b json.RawMessage, err error) {
	defer func() {
		if recover() != nil { // the reflector panics on some types (channels, funcs)
			b, err = nil, errNoSchema
		}
	}()
	r := jsonschema.Reflector{ExpandedStruct: true, DoNotReference: true}
	return json.Marshal(r.ReflectFromType(t))
}

type schemaError string

func (e schemaError) Error() string { return string(e) }

const errNoSchema = schemaError("control: no JSON Schema for this type")

func typeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.PkgPath() == "" || t.Name() == "" {
		return t.String()
	}
	return t.PkgPath() + "." + t.Name()
}
