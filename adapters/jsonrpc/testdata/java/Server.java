// Server serves a Java interface with the RabbitMQ Java client's
// JsonRpcServer, so TestJavaServer can call it from Go. Arguments: AMQP URI,
// queue name. It prints "ready" once serving and stops when stdin closes.
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.tools.jsonrpc.JsonRpcServer;

public class Server {
    public interface Calc {
        int add(int a, int b);
        String hello(String name);
        String fail(String why);
    }

    public static class CalcImpl implements Calc {
        public int add(int a, int b) { return a + b; }
        public String hello(String name) { return "hello " + name; }
        public String fail(String why) { throw new IllegalStateException(why); }
    }

    public static void main(String[] args) throws Exception {
        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(args[0]);
        if (factory.getVirtualHost().isEmpty()) {
            factory.setVirtualHost("/");
        }
        Connection conn = factory.newConnection();
        Channel ch = conn.createChannel();
        ch.queueDeclare(args[1], false, false, true, null);
        JsonRpcServer server = new JsonRpcServer(ch, args[1], Calc.class, new CalcImpl());
        Thread loop = new Thread(() -> {
            try {
                server.mainloop();
            } catch (Exception e) {
                // closed
            }
        });
        loop.start();
        System.out.println("ready");
        System.out.flush();
        while (System.in.read() != -1) {
        }
        server.terminateMainloop();
        conn.close();
    }
}
