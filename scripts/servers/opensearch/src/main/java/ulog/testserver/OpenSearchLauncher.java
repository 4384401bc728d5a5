package ulog.testserver;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * Runs one real OpenSearch node for ulog's integration tests: single node,
 * loopback only, HTTP and transport on the given ports, data under the given
 * home. Started and stopped by scripts/test-servers; not a product.
 *
 * <pre>
 * java -cp launcher.jar:lib/* ulog.testserver.OpenSearchLauncher \
 *   --home DIR --http-port N --transport-port N [-Ekey=value ...]
 * </pre>
 *
 * Once the node is up it sets the persistent cluster setting
 * cluster.default_number_of_replicas=0 (one node: a replica would never be
 * assigned and health would stay yellow), then creates HOME/ready, which
 * scripts/test-servers waits for.
 *
 * The node is the server jar alone with the netty4 transport: the
 * distribution's other modules (painless, ingest-common, reindex, ...) are
 * absent. TERM closes the node cleanly, so its data survives a restart.
 */
public final class OpenSearchLauncher {

    /** The node with only the plugins given here, built as the distribution's bootstrap would. */
    static final class TestNode extends Node {
        TestNode(Environment environment, List<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    private static final String LOG4J2_PROPERTIES = String.join("\n",
            "status = error",
            "appender.console.type = Console",
            "appender.console.name = console",
            "appender.console.layout.type = PatternLayout",
            "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n",
            "rootLogger.level = info",
            "rootLogger.appenderRef.console.ref = console",
            // Deprecation warnings go to the HTTP response header, not the log.
            "logger.deprecation.name = org.opensearch.deprecation",
            "logger.deprecation.level = error",
            "");

    private static void usage(String message) {
        System.err.println("OpenSearchLauncher: " + message);
        System.err.println("usage: OpenSearchLauncher --home DIR --http-port N --transport-port N [-Ekey=value ...]");
        System.exit(2);
    }

    public static void main(String[] args) throws Exception {
        Path home = null;
        String httpPort = null;
        String transportPort = null;
        Settings.Builder extra = Settings.builder();
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            if (arg.startsWith("-E") && arg.indexOf('=') > 2) {
                int eq = arg.indexOf('=');
                extra.put(arg.substring(2, eq), arg.substring(eq + 1));
                continue;
            }
            if (i + 1 >= args.length) {
                usage("missing value after " + arg);
            }
            switch (arg) {
                case "--home":
                    home = Paths.get(args[++i]).toAbsolutePath();
                    break;
                case "--http-port":
                    httpPort = args[++i];
                    break;
                case "--transport-port":
                    transportPort = args[++i];
                    break;
                default:
                    usage("unknown argument " + arg);
            }
        }
        if (home == null || httpPort == null || transportPort == null) {
            usage("--home, --http-port and --transport-port are required");
        }

        Path ready = home.resolve("ready");
        Files.deleteIfExists(ready);
        Path config = home.resolve("config");
        Files.createDirectories(config);
        Files.createDirectories(home.resolve("plugins"));
        Files.createDirectories(home.resolve("modules"));
        Files.createDirectories(home.resolve("logs"));
        Files.write(config.resolve("log4j2.properties"), LOG4J2_PROPERTIES.getBytes(StandardCharsets.UTF_8));

        Settings settings = Settings.builder()
                .put("path.home", home.toString())
                .put("path.data", home.resolve("data").toString())
                .put("path.logs", home.resolve("logs").toString())
                .put("cluster.name", "ulog-test")
                .put("node.name", "ulog-test")
                .put("discovery.type", "single-node")
                .put("network.host", "127.0.0.1")
                .put("http.port", httpPort)
                .put("transport.port", transportPort)
                // A nearly full disk must not turn the test indices read only.
                .put("cluster.routing.allocation.disk.threshold_enabled", false)
                .put(extra.build())
                .build();

        Environment environment = InternalSettingsPreparer.prepareEnvironment(
                settings, Collections.emptyMap(), config, () -> "ulog-test");
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("ulog-test");
        LogConfigurator.configure(environment);

        List<Class<? extends Plugin>> plugins = List.of(Netty4Plugin.class);
        Node node = new TestNode(environment, plugins);

        // Every OpenSearch thread is a daemon: main waits here until TERM has closed the node.
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                Files.deleteIfExists(ready);
                node.close();
                node.awaitClose(15, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "ulog-test-shutdown"));

        node.start();
        node.client().admin().cluster().prepareUpdateSettings()
                .setPersistentSettings(Settings.builder().put("cluster.default_number_of_replicas", 0))
                .get();
        Files.write(ready, ("http://127.0.0.1:" + httpPort + "\n").getBytes(StandardCharsets.UTF_8));
        System.out.println("OpenSearchLauncher: ready, http 127.0.0.1:" + httpPort);
        System.out.flush();
        closed.await();
    }
}
