// Starts one OpenSearch 2.19 node for elastask's test bed, on loopback, with data under a given
// directory. Prints "ELASTASK_ENGINE_READY <port>" once the cluster answers, and shuts the node
// down cleanly when its standard input closes (so the node never outlives the test bed).
// Usage: java -cp <classpath> EngineLauncher.java <base dir> <http port> <transport port>
import org.codelibs.opensearch.runner.OpenSearchRunner;

public class EngineLauncher {
  public static void main(String[] args) throws Exception {
    String baseDir = args[0];
    int httpPort = Integer.parseInt(args[1]);
    int transportPort = Integer.parseInt(args[2]);
    OpenSearchRunner runner = new OpenSearchRunner();
    runner.onBuild((index, settings) -> {
      settings.put("http.port", String.valueOf(httpPort));
      settings.put("transport.port", String.valueOf(transportPort));
      settings.put("network.host", "127.0.0.1");
      // A test machine's disk may be nearly full; that must not turn the index read-only.
      settings.put("cluster.routing.allocation.disk.threshold_enabled", "false");
      settings.put("action.auto_create_index", "false");
    });
    try {
      runner.build(new OpenSearchRunner.Configs()
          .basePath(baseDir).numOfNode(1).clusterName("elastask-testbed").printOnFailure().build());
      runner.ensureYellow();
    } catch (Throwable t) {
      t.printStackTrace();
      System.exit(2);
    }
    System.out.println("ELASTASK_ENGINE_READY " + httpPort);
    System.out.flush();
    while (System.in.read() != -1) {
      // wait for the parent to close our stdin
    }
    runner.close();
    System.exit(0);
  }
}
