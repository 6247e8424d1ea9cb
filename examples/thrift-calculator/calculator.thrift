// Calculator is the example service of examples/thrift-calculator: a Thrift
// service served over a message broker by mqrpc's adapters/thrift.
//
// Regenerate the Go code (see README.md) with:
//   thrift --gen go:package_prefix=github.com/mqrpc/mqrpc/examples/thrift-calculator/,skip_remote -out . calculator.thrift

namespace go calculator

/** InvalidOperation is the declared exception of divide. */
exception InvalidOperation {
  1: i32 code,
  2: string why
}

/** Calculator adds numbers over a message broker. */
service Calculator {
  /** ping does nothing; it checks that the service answers. */
  void ping(),

  /** add returns a + b. */
  i32 add(1: i32 a, 2: i32 b),

  /** calcSum takes a list of numbers and returns their sum. */
  double calcSum(1: list<double> numbers),

  /** divide returns a / b; dividing by zero raises InvalidOperation. */
  i32 divide(1: i32 a, 2: i32 b) throws (1: InvalidOperation ouch),

  /** record stores a note; it is oneway, so the caller does not wait. */
  oneway void record(1: string note)
}
