//go:build !race

package rocketmq_test

// raceDetector reports whether the tests run with -race; see realBroker.
const raceDetector = false
