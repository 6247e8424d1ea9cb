package control

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"
)

// Verb is a control request: PING, INFO or STATS.
type Verb string

// The control verbs.
const (
	Ping  Verb = "PING"
	Info  Verb = "INFO"
	Stats Verb = "STATS"
)

// APIPrefix is the first token of every control subject.
const APIPrefix = "$SRV"

// Response types, the "type" field of each answer (NATS micro's).
const (
	PingResponseType  = "io.nats.micro.v1.ping_response"
	InfoResponseType  = "io.nats.micro.v1.info_response"
	StatsResponseType = "io.nats.micro.v1.stats_response"
)

// Health statuses, with grpc.health.v1's meaning.
const (
	// Serving: the instance takes requests.
	Serving = "SERVING"
	// NotServing: the instance is draining or stopped; it takes no new
	// requests.
	NotServing = "NOT_SERVING"
	// ServiceUnknown: no instance of the service answered (the caller's
	// verdict; no instance sends it).
	ServiceUnknown = "SERVICE_UNKNOWN"
)

// Subject returns the control subject of verb for every service (name
// and id empty), every instance of a service (id empty) or one instance.
// The name is the service's control name (see Name).
func Subject(verb Verb, name, id string) string {
	switch {
	case name == "":
		return APIPrefix + "." + string(verb)
	case id == "":
		return APIPrefix + "." + string(verb) + "." + name
	}
	return APIPrefix + "." + string(verb) + "." + name + "." + id
}

var invalidName = regexp.MustCompile(`[^A-Za-z0-9_-]`)

// Name returns the control name of the service served on subject: the
// subject with every character other than letters, digits, '-' and '_'
// replaced by '_' (NATS micro's rule for service names; a '.' would split
// the control subject). "Calculator" stays "Calculator"; "calc.v2" becomes
// "calc_v2".
func Name(subject string) string { return invalidName.ReplaceAllString(subject, "_") }

// Identity names one instance of a service.
type Identity struct {
	// Name is the service's control name (see Name).
	Name string `json:"name"`
	// ID is the instance's ID, unique among the instances.
	ID string `json:"id"`
	// Version is the service's version (SemVer), "0.0.0" when unset.
	Version string `json:"version"`
	// Metadata annotates the service.
	Metadata map[string]string `json:"metadata"`
}

// PingResponse answers PING.
type PingResponse struct {
	Identity
	// Type is PingResponseType.
	Type string `json:"type"`
	// Status is the instance's health: Serving or NotServing.
	Status string `json:"status,omitempty"`
}

// InfoResponse answers INFO.
type InfoResponse struct {
	Identity
	// Type is InfoResponseType.
	Type        string `json:"type"`
	Description string `json:"description"`
	// Endpoints are the service's methods, sorted by name.
	Endpoints []EndpointInfo `json:"endpoints"`
	// Subject is the subject the service is served on.
	Subject string `json:"subject,omitempty"`
	// Codecs are the content types the service accepts, the first the
	// one a request without a content-type is decoded with (from a
	// handler with a Codecs method, as rpc.Server has).
	Codecs []string `json:"codecs,omitempty"`
	// Status is the instance's health: Serving or NotServing.
	Status string `json:"status,omitempty"`
}

// EndpointInfo describes one method.
type EndpointInfo struct {
	// Name is the method name (the mqrpc-method header).
	Name string `json:"name"`
	// Subject is the service subject: every method of a service shares
	// it, the method travels in a header.
	Subject    string            `json:"subject"`
	QueueGroup string            `json:"queue_group"`
	Metadata   map[string]string `json:"metadata"`
	// RequestType and ReplyType name the Go types of a typed handler
	// ("" for a raw one).
	RequestType string `json:"request_type,omitempty"`
	ReplyType   string `json:"reply_type,omitempty"`
	// RequestSchema and ReplySchema are JSON Schemas of the request and
	// reply (for typed handlers; nil when unknown).
	RequestSchema json.RawMessage `json:"request_schema,omitempty"`
	ReplySchema   json.RawMessage `json:"reply_schema,omitempty"`
}

// StatsResponse answers STATS.
type StatsResponse struct {
	Identity
	// Type is StatsResponseType.
	Type string `json:"type"`
	// Started is when the instance started serving.
	Started   time.Time        `json:"started"`
	Endpoints []*EndpointStats `json:"endpoints"`
	// Status is the instance's health: Serving or NotServing.
	Status string `json:"status,omitempty"`
}

// EndpointStats are one method's counters on one instance, since it
// started.
type EndpointStats struct {
	Name       string `json:"name"`
	Subject    string `json:"subject"`
	QueueGroup string `json:"queue_group"`
	// NumRequests counts requests handled (finished).
	NumRequests int `json:"num_requests"`
	// NumErrors counts requests answered with an error status or failed
	// as deliveries.
	NumErrors int `json:"num_errors"`
	// LastError is the last error's code and message.
	LastError string `json:"last_error"`
	// ProcessingTime is the total time spent handling requests, and
	// AverageProcessingTime that divided by NumRequests (JSON: ns).
	ProcessingTime        time.Duration   `json:"processing_time"`
	AverageProcessingTime time.Duration   `json:"average_processing_time"`
	Data                  json.RawMessage `json:"data,omitempty"`
	// InFlight is the number of requests being handled now.
	InFlight int64 `json:"in_flight"`
}

// checkType returns an error unless got is want.
func checkType(got, want string) error {
	if got != want {
		return fmt.Errorf("control: answer of type %q, want %q", got, want)
	}
	return nil
}
