package amqp

// ReplyNode is replyNode, for the tests of package amqp_test.
var ReplyNode = replyNode
