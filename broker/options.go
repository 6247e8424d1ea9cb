package broker

// ServeConfig is the resolved configuration of one Serve call. Broker
// implementations obtain it with NewServeConfig.
type ServeConfig struct {
	// Concurrency is the maximum number of messages handled at once by
	// this subscription. Default 64 (DefaultConcurrency). Brokers with flow
	// control tie their prefetch to it.
	Concurrency int
	// Queue is the name of the competing-consumer group: servers with the
	// same subject and queue share the messages. Default: the subject.
	Queue string
}

// DefaultConcurrency is the default ServeConfig.Concurrency.
const DefaultConcurrency = 64

// ServeOption configures a Serve call.
type ServeOption func(*ServeConfig)

// WithConcurrency sets how many messages a subscription handles at once.
// Values below 1 select the default (DefaultConcurrency).
func WithConcurrency(n int) ServeOption {
	return func(c *ServeConfig) { c.Concurrency = n }
}

// WithQueue sets the competing-consumer group name (NATS queue group, AMQP
// queue, RocketMQ consumer group). An empty name selects the default, the
// subject itself.
func WithQueue(name string) ServeOption {
	return func(c *ServeConfig) { c.Queue = name }
}

// NewServeConfig applies opts to the defaults for subject.
func NewServeConfig(subject string, opts ...ServeOption) ServeConfig {
	var c ServeConfig
	for _, o := range opts {
		o(&c)
	}
	if c.Concurrency < 1 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Queue == "" {
		c.Queue = subject
	}
	return c
}
