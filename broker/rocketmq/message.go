package rocketmq

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// RocketMQ property names mqrpc reads or writes besides the headers. The
// upper-case ones are RocketMQ's own (primitive.Property*, Java's
// MessageConst); they are spelled out here because the wire format is the
// contract, not the Go constant.
const (
	propKeys          = "KEYS"            // Message.ID (indexed by the broker)
	propTags          = "TAGS"            // the mqrpc-method header, for tag filters
	propTTL           = "TTL"             // request lifetime (RIP-16); see ttlSeconds
	propCorrelationID = "CORRELATION_ID"  // request-reply pairing (RIP-16)
	propReplyTo       = "REPLY_TO_CLIENT" // requester's client ID (RIP-16)
	propCluster       = "CLUSTER"         // set by the broker on every stored message
	propMsgType       = "MSG_TYPE"        // "reply" makes the producer use SEND_REPLY_MESSAGE
	msgTypeReply      = "reply"
	replyTopicSuffix  = "_REPLY_TOPIC"

	// propInit marks the message Serve publishes to make the broker create
	// a missing topic (see Broker.Serve). Servers acknowledge and skip it.
	propInit = "mqrpc-topic-init"

	// propEmptyBody marks a message whose body is empty. RocketMQ cannot
	// carry an empty body (the broker fails on a missing body), so such a
	// message travels with the one-byte body emptyBody and this property.
	propEmptyBody = "mqrpc-empty-body"
)

// emptyBody stands in for an empty body on the wire (see propEmptyBody).
var emptyBody = []byte{0}

// maxNameLen is RocketMQ's limit for topic names (consumer groups allow 255).
const maxNameLen = 127

// nameRule is what mqrpc uses of RocketMQ's names (^[%|a-zA-Z0-9_-]+$):
// '%' and '|' are allowed by RocketMQ but carry meaning (namespaces, retry
// topics), so mqrpc maps them away like any other character.
func nameRule(maxLen int) kernel.NameRule {
	return kernel.NameRule{MaxLen: maxLen, Allowed: func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
	}}
}

// topicOf is the topic of subject: subject itself when RocketMQ accepts it,
// otherwise kernel.MapName's mapping ("helloworld.Greeter" is
// "helloworld_Greeter-<hash>"), the same in every process.
func topicOf(subject string) (string, error) {
	if subject == "" {
		return "", errors.New("rocketmq: empty subject")
	}
	return kernel.MapName(subject, nameRule(maxNameLen)), nil
}

// validName reports whether s is a valid RocketMQ name that mqrpc uses as
// it is (a producer group): nameRule, at most max bytes.
func validName(s string, max int) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > max {
		return fmt.Errorf("name longer than %d characters", max)
	}
	rule := nameRule(max)
	for _, r := range s {
		if !rule.Allowed(r) {
			return fmt.Errorf("character %q not allowed (RocketMQ allows [a-zA-Z0-9_-])", r)
		}
	}
	return nil
}

// headerName reports whether a received property is an mqrpc header: every
// header is written with a lower-case name, while RocketMQ's own properties
// are upper case (KEYS, TAGS, UNIQ_KEY, ...) or start with "__"
// (__transactionId__, __STARTDELIVERTIME).
func headerName(name string) bool {
	if name == "" || strings.HasPrefix(name, "__") || name == propInit || name == propEmptyBody {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' {
			return false
		}
	}
	return true
}

func checkHeader(name, value string) error {
	if name == "" {
		return errors.New("rocketmq: empty header name")
	}
	if strings.HasPrefix(name, "__") {
		return fmt.Errorf("rocketmq: header %q: names starting with \"__\" are reserved by RocketMQ", name)
	}
	// RocketMQ serializes properties as name 0x01 value 0x02 ...; a header
	// containing either byte would corrupt every property after it.
	if strings.ContainsAny(name, "\x01\x02") || strings.ContainsAny(value, "\x01\x02") {
		return fmt.Errorf("rocketmq: header %q: bytes 0x01 and 0x02 cannot be carried in RocketMQ properties", name)
	}
	return nil
}

// toProperties builds the property map of an outgoing message: headers
// under their lower-case names, the ID as KEYS, the method as TAGS and the
// deadline as mqrpc-deadline. extra is how many more properties
// the map will receive (from the caller and from the client as it sends):
// a map sized for all of them never grows.
//
// The map is handed to primitive.Message.WithProperties as a whole because
// WithProperty silently drops empty values, and an empty header value is
// still a header.
func toProperties(m *broker.Message, deadline time.Time, extra int) (map[string]string, error) {
	n := len(m.Header) + extra
	if m.ID != "" {
		n++ // KEYS
	}
	if _, ok := m.Header[broker.HeaderMethod]; ok {
		n++ // TAGS
	}
	if !deadline.IsZero() {
		n++ // mqrpc-deadline
	}
	if len(m.Body) == 0 {
		n++ // propEmptyBody
	}
	props := make(map[string]string, n)
	for k, v := range m.Header {
		name := strings.ToLower(k)
		if err := checkHeader(name, v); err != nil {
			return nil, err
		}
		props[name] = v
	}
	// The deadline is a field, never a header (broker.HeaderDeadline).
	delete(props, broker.HeaderDeadline)
	if m.ID != "" {
		if strings.ContainsAny(m.ID, "\x01\x02") {
			return nil, errors.New("rocketmq: message ID contains byte 0x01 or 0x02")
		}
		props[propKeys] = m.ID
	}
	if method := props[broker.HeaderMethod]; method != "" && !strings.ContainsAny(method, " |") {
		// Tags let a plain RocketMQ consumer subscribe to some methods
		// only ("Add || Sub"); '|' and ' ' would break that syntax.
		props[propTags] = method
	}
	if !deadline.IsZero() {
		props[broker.HeaderDeadline] = broker.FormatDeadline(deadline)
	}
	return props, nil
}

// wireSize is the size a message with body and props takes in RocketMQ's
// property encoding (name 0x01 value 0x02), the measure of the broker's
// maxMessageSize.
func wireSize(body []byte, props map[string]string) int {
	n := len(body)
	for k, v := range props {
		n += len(k) + len(v) + 2
	}
	return n
}

// ttlSeconds is the lifetime rocketmq-client-go gives a request's entry in
// its table of pending requests, and writes as the request's TTL property
// (in seconds; the Java client writes milliseconds, and the broker reads
// neither): d rounded up to whole seconds, at least 1 and at most
// maxRequestTTL, so that a deadline centuries ahead cannot overflow.
func ttlSeconds(d time.Duration) int64 {
	if d > maxRequestTTL {
		d = maxRequestTTL
	}
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// maxRequestTTL bounds how long the client keeps a pending request: as
// long as a request with no deadline at all (see WithRequestTTL).
const maxRequestTTL = unboundedTTL

// fromProperties builds a broker.Message from a received message's
// properties and body (see decode).
func fromProperties(topic string, props map[string]string, body []byte) (*broker.Message, error) {
	m := &broker.Message{}
	err := decode(m, topic, props, body)
	return m, err
}

// decode fills m, a zero message except that its Header may be an empty
// map to fill, from a received message's properties and body. The body is
// not copied: the client decodes every message into a buffer of its own
// and never reuses it. A malformed deadline is an error; m then holds the
// rest.
func decode(m *broker.Message, topic string, props map[string]string, body []byte) error {
	m.Subject, m.ID = topic, props[propKeys]
	if len(body) > 0 && props[propEmptyBody] == "" {
		m.Body = body
	}
	var err error
	for k, v := range props {
		if !headerName(k) {
			continue
		}
		if k == broker.HeaderDeadline {
			m.Deadline, err = broker.ParseDeadline(v)
			continue
		}
		if m.Header == nil {
			// Not sized like props, most of which are RocketMQ's own: a
			// small map holds 8 headers without growing.
			m.Header = make(broker.Header)
		}
		m.Header[k] = v
	}
	return err
}

// Properties rocketmq-client-go adds to a message as it sends it: UNIQ_KEY
// to every message, and CORRELATION_ID, REPLY_TO_CLIENT and TTL to a
// request.
const (
	clientSendProps    = 1
	clientRequestProps = 3
)

// rocketMessage converts m into a RocketMQ message for topic, with room
// for extra more properties, and returns its size (wireSize).
func rocketMessage(topic string, m *broker.Message, deadline time.Time, extra int) (*primitive.Message, int, error) {
	props, err := toProperties(m, deadline, extra)
	if err != nil {
		return nil, 0, err
	}
	rm := &primitive.Message{Topic: topic, Body: wireBody(m.Body, props)}
	size := wireSize(rm.Body, props)
	rm.WithProperties(props)
	return rm, size, nil
}

// replyMessage builds the reply to req by hand instead of with
// consumer.CreateReplyMessage, which drops the body (it parses the body as
// properties and never sets Message.Body: rocketmq-client-go #890, #1046).
// It returns the reply's size (wireSize).
func replyMessage(req *primitive.MessageExt, reply *broker.Message) (*primitive.Message, int, error) {
	cluster := req.GetProperty(propCluster)
	if cluster == "" {
		return nil, 0, errors.New("rocketmq: request carries no CLUSTER property; the broker is too old for request-reply")
	}
	// + MSG_TYPE, CORRELATION_ID, REPLY_TO_CLIENT, TTL and the client's.
	props, err := toProperties(reply, time.Time{}, 4+clientSendProps)
	if err != nil {
		return nil, 0, err
	}
	props[propMsgType] = msgTypeReply
	props[propCorrelationID] = req.GetProperty(propCorrelationID)
	props[propReplyTo] = req.GetProperty(propReplyTo)
	if ttl := req.GetProperty(propTTL); ttl != "" {
		props[propTTL] = ttl
	}
	delete(props, propTags)
	rm := &primitive.Message{Topic: cluster + replyTopicSuffix, Body: wireBody(reply.Body, props)}
	size := wireSize(rm.Body, props)
	rm.WithProperties(props)
	return rm, size, nil
}

// wireBody returns the body to send, substituting emptyBody (and marking
// props) for an empty one.
func wireBody(body []byte, props map[string]string) []byte {
	if len(body) > 0 {
		return body
	}
	props[propEmptyBody] = "1"
	return emptyBody
}

// isRequest reports whether a delivered message expects a reply.
func isRequest(m *primitive.MessageExt) bool {
	return m.GetProperty(propReplyTo) != "" && m.GetProperty(propCorrelationID) != ""
}
