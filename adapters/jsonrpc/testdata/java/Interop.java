// Interop calls an mqrpc JSON-RPC service with the RabbitMQ Java client's
// JsonRpcClient, exactly as a Java program would. TestJavaClient compiles
// and runs it. Arguments: AMQP URI, queue name.
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.tools.jsonrpc.JsonRpcClient;
import com.rabbitmq.tools.jsonrpc.JsonRpcException;
import com.rabbitmq.tools.jsonrpc.ProcedureDescription;

public class Interop {
    public static void main(String[] args) throws Exception {
        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(args[0]);
        if (factory.getVirtualHost().isEmpty()) {
            factory.setVirtualHost("/"); // "amqp://host/" means "/" to Go's amqp091
        }
        try (Connection conn = factory.newConnection(); Channel ch = conn.createChannel()) {
            // The constructor calls system.describe.
            JsonRpcClient client = new JsonRpcClient(ch, "", args[1], 10000);
            System.out.println("service " + client.getServiceDescription().getName());
            ProcedureDescription add = client.getServiceDescription().getProcedure("add", 2);
            System.out.println("add/2 returns " + add.getReturn() + " as " + add.getJavaReturnType());
            System.out.println("add 40 2 = " + client.call("add", new Object[] {40, 2}));
            System.out.println("hello = " + client.call("hello", new Object[] {"java"}));
            try {
                client.call("fail", new Object[] {"notfound"});
                System.out.println("fail did not fail");
            } catch (JsonRpcException e) {
                System.out.println("fail: " + e.getName() + " " + e.getCode() + " " + e.getMessage());
            }
            client.close();
        }
    }
}
