// Spark side of the rpcenv <-> Spark interop check (see README.md in this directory).
//
// Built only against Apache Spark's own network-common classes (spark-network-common 4.3.0,
// module "rpc", no auth, no TLS), so that the Rust transport is checked against the real thing.
//
//   java -cp "build:<jars>/*" SparkPeer server <port-file>
//   java -cp "build:<jars>/*" SparkPeer client <port>
//
// Echo protocol (implemented identically by examples/spark_interop.rs):
//   RPC "FAIL:<rest>"  -> failure whose text contains <rest>
//   RPC "__count__"    -> number of one-way messages received so far, ASCII decimal
//   RPC "__shutdown__" -> "bye", then the server exits 0
//   any other RPC      -> its own body
//   one-way message    -> increments the one-way counter

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReferenceArray;

import org.apache.spark.network.TransportContext;
import org.apache.spark.network.client.RpcResponseCallback;
import org.apache.spark.network.client.TransportClient;
import org.apache.spark.network.client.TransportClientFactory;
import org.apache.spark.network.server.OneForOneStreamManager;
import org.apache.spark.network.server.RpcHandler;
import org.apache.spark.network.server.StreamManager;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class SparkPeer {
  private static final String HOST = "127.0.0.1";
  /** Upper bound for every single wait in the client (per check). */
  private static final long CHECK_TIMEOUT_MS = 60_000;
  /** The server gives up (exit 1) if nobody asks it to shut down within this time. */
  private static final long SERVER_LIFETIME_MS = 10 * 60_000;

  private SparkPeer() {}

  public static void main(String[] args) throws Exception {
    if (args.length == 2 && args[0].equals("server")) {
      System.exit(runServer(Paths.get(args[1])));
    } else if (args.length == 2 && args[0].equals("client")) {
      int port;
      try {
        port = Integer.parseInt(args[1]);
        if (port <= 0 || port > 65535) {
          throw new NumberFormatException("out of range");
        }
      } catch (NumberFormatException e) {
        System.err.println("SparkPeer: invalid port '" + args[1] + "'");
        System.exit(2);
        return;
      }
      System.exit(runClient(port));
    } else {
      System.err.println("usage: SparkPeer server <port-file> | SparkPeer client <port>");
      System.exit(2);
    }
  }

  private static TransportConf conf() {
    Map<String, String> m = new HashMap<>();
    // NIO keeps the JVM away from Netty's native epoll library; the wire format is identical.
    m.put("spark.rpc.io.mode", "NIO");
    m.put("spark.rpc.io.connectionTimeout", "60s");
    m.put("spark.rpc.io.connectionCreationTimeout", "30s");
    return new TransportConf("rpc", new MapConfigProvider(m));
  }

  // ---------------------------------------------------------------- server

  private static final class EchoHandler extends RpcHandler {
    private final StreamManager streams = new OneForOneStreamManager();
    final AtomicLong oneWays = new AtomicLong();
    final CountDownLatch shutdown = new CountDownLatch(1);

    @Override
    public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
      // Spark releases the request buffer when receive() returns, while the reply may still be
      // queued for writing: always answer with a copy.
      byte[] body = toBytes(message);
      String prefix = new String(body, 0, Math.min(body.length, 5), StandardCharsets.US_ASCII);
      if (prefix.equals("FAIL:")) {
        String rest = new String(body, 5, body.length - 5, StandardCharsets.UTF_8);
        callback.onFailure(new RuntimeException(rest));
      } else if (Arrays.equals(body, ascii("__count__"))) {
        callback.onSuccess(ByteBuffer.wrap(ascii(Long.toString(oneWays.get()))));
      } else if (Arrays.equals(body, ascii("__shutdown__"))) {
        callback.onSuccess(ByteBuffer.wrap(ascii("bye")));
        shutdown.countDown();
      } else {
        callback.onSuccess(ByteBuffer.wrap(body));
      }
    }

    @Override
    public void receive(TransportClient client, ByteBuffer message) {
      oneWays.incrementAndGet();
    }

    @Override
    public StreamManager getStreamManager() {
      return streams;
    }

    @Override
    public void exceptionCaught(Throwable cause, TransportClient client) {
      System.err.println("SparkPeer server: exception on " + client + ": " + cause);
    }
  }

  private static int runServer(Path portFile) throws Exception {
    EchoHandler handler = new EchoHandler();
    TransportContext context = new TransportContext(conf(), handler);
    TransportServer server = context.createServer(HOST, 0, Collections.emptyList());
    int port = server.getPort();

    Path abs = portFile.toAbsolutePath();
    Path tmp = abs.resolveSibling(abs.getFileName() + ".tmp");
    Files.write(tmp, ascii(port + "\n"));
    Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    System.err.println("SparkPeer server: listening on " + HOST + ":" + port);

    boolean asked = handler.shutdown.await(SERVER_LIFETIME_MS, TimeUnit.MILLISECONDS);
    if (asked) {
      // Let the "bye" reply reach the wire before tearing the server down.
      Thread.sleep(300);
    } else {
      System.err.println("SparkPeer server: no __shutdown__ within "
          + SERVER_LIFETIME_MS / 1000 + " s, giving up");
    }
    server.close();
    context.close();
    System.err.println("SparkPeer server: " + handler.oneWays.get() + " one-way messages received");
    return asked ? 0 : 1;
  }

  // ---------------------------------------------------------------- client

  private interface Check {
    /** Returns null on success, or why it failed. */
    String run(TransportClient client) throws Exception;
  }

  private static int runClient(int port) {
    TransportContext context = new TransportContext(conf(), new EchoHandler());
    TransportClientFactory factory = context.createClientFactory();
    int passed = 0;
    int failed = 0;
    TransportClient client = null;
    try {
      client = factory.createClient(HOST, port);
    } catch (Exception e) {
      System.out.println("FAIL connect: " + oneLine(e));
      failed++;
    }

    if (client != null) {
      List<String> names = new ArrayList<>();
      List<Check> checks = new ArrayList<>();
      int[] sizes = {0, 1, 100, 64 * 1024, 16 * 1024 * 1024};
      String[] sizeNames = {"0B", "1B", "100B", "64KiB", "16MiB"};
      for (int i = 0; i < sizes.length; i++) {
        final int size = sizes[i];
        names.add("echo_" + sizeNames[i]);
        checks.add(c -> checkEcho(c, size));
      }
      names.add("fail_boom");
      checks.add(SparkPeer::checkFailure);
      names.add("oneway_1000_count");
      checks.add(SparkPeer::checkOneWay);
      names.add("concurrent_200");
      checks.add(SparkPeer::checkConcurrent);

      for (int i = 0; i < checks.size(); i++) {
        String why;
        try {
          why = checks.get(i).run(client);
        } catch (Throwable t) {
          why = oneLine(t);
        }
        if (why == null) {
          System.out.println("PASS " + names.get(i));
          passed++;
        } else {
          System.out.println("FAIL " + names.get(i) + ": " + why);
          failed++;
        }
        System.out.flush();
      }

      // Not a check: ask the server to exit (run.sh checks that it did).
      try {
        ByteBuffer bye = client.sendRpcSync(ByteBuffer.wrap(ascii("__shutdown__")), 10_000);
        String text = new String(toBytes(bye), StandardCharsets.UTF_8);
        if (!text.equals("bye")) {
          System.err.println("SparkPeer client: __shutdown__ answered '" + text + "', not 'bye'");
        }
      } catch (Throwable t) {
        System.err.println("SparkPeer client: __shutdown__ failed: " + oneLine(t));
      }
      client.close();
    }
    factory.close();
    context.close();

    System.out.println("interop client: " + passed + " passed, " + failed + " failed");
    System.out.flush();
    return failed == 0 && passed > 0 ? 0 : 1;
  }

  private static String checkEcho(TransportClient client, int size) {
    byte[] body = new byte[size];
    new Random(0x5eed0000L + size).nextBytes(body);
    ByteBuffer reply = client.sendRpcSync(ByteBuffer.wrap(body), CHECK_TIMEOUT_MS);
    byte[] got = toBytes(reply);
    if (got.length != body.length) {
      return "reply is " + got.length + " bytes, expected " + body.length;
    }
    for (int i = 0; i < body.length; i++) {
      if (got[i] != body[i]) {
        return "reply differs from request at byte " + i;
      }
    }
    return null;
  }

  private static String checkFailure(TransportClient client) throws Exception {
    CompletableFuture<String> result = new CompletableFuture<>();
    client.sendRpc(ByteBuffer.wrap(ascii("FAIL:boom")), new RpcResponseCallback() {
      @Override
      public void onSuccess(ByteBuffer response) {
        result.complete("unexpected success: '"
            + new String(toBytes(response), StandardCharsets.UTF_8) + "'");
      }

      @Override
      public void onFailure(Throwable e) {
        String text = String.valueOf(e.getMessage());
        result.complete(text.contains("boom")
            ? null : "failure text does not contain 'boom': " + oneLine(e));
      }
    });
    return result.get(CHECK_TIMEOUT_MS, TimeUnit.MILLISECONDS);
  }

  private static String checkOneWay(TransportClient client) {
    // Same connection, one-ways first: the count request is written after all of them.
    for (int i = 0; i < 1000; i++) {
      client.send(ByteBuffer.wrap(ascii("oneway-" + i)));
    }
    ByteBuffer reply = client.sendRpcSync(ByteBuffer.wrap(ascii("__count__")), CHECK_TIMEOUT_MS);
    String text = new String(toBytes(reply), StandardCharsets.UTF_8);
    return text.equals("1000") ? null : "__count__ answered '" + text + "', expected '1000'";
  }

  private static String checkConcurrent(TransportClient client) throws Exception {
    final int n = 200;
    byte[][] bodies = new byte[n][];
    Random random = new Random(0xc0ffeeL);
    for (int i = 0; i < n; i++) {
      byte[] tag = ascii("concurrent-" + i + ":");
      byte[] body = Arrays.copyOf(tag, tag.length + 1 + random.nextInt(256));
      byte[] tail = new byte[body.length - tag.length];
      random.nextBytes(tail);
      System.arraycopy(tail, 0, body, tag.length, tail.length);
      bodies[i] = body;
    }
    AtomicReferenceArray<String> outcome = new AtomicReferenceArray<>(n);
    CountDownLatch done = new CountDownLatch(n);
    for (int i = 0; i < n; i++) {
      final int idx = i;
      client.sendRpc(ByteBuffer.wrap(bodies[i]), new RpcResponseCallback() {
        @Override
        public void onSuccess(ByteBuffer response) {
          // The response buffer is released after onSuccess returns: compare now.
          byte[] got = toBytes(response);
          outcome.set(idx, Arrays.equals(got, bodies[idx]) ? "ok" : "reply differs from its request");
          done.countDown();
        }

        @Override
        public void onFailure(Throwable e) {
          outcome.set(idx, "failed: " + oneLine(e));
          done.countDown();
        }
      });
    }
    if (!done.await(CHECK_TIMEOUT_MS, TimeUnit.MILLISECONDS)) {
      return done.getCount() + " of " + n + " requests unanswered after "
          + CHECK_TIMEOUT_MS / 1000 + " s";
    }
    for (int i = 0; i < n; i++) {
      if (!"ok".equals(outcome.get(i))) {
        return "request " + i + ": " + outcome.get(i);
      }
    }
    return null;
  }

  // ---------------------------------------------------------------- helpers

  private static byte[] ascii(String s) {
    return s.getBytes(StandardCharsets.US_ASCII);
  }

  private static byte[] toBytes(ByteBuffer buffer) {
    ByteBuffer dup = buffer.duplicate();
    byte[] bytes = new byte[dup.remaining()];
    dup.get(bytes);
    return bytes;
  }

  private static String oneLine(Throwable t) {
    String s = t.toString();
    Throwable cause = t.getCause();
    if (cause != null && cause != t) {
      s += " (caused by " + cause + ")";
    }
    s = s.replace("\r", "").replace("\n", " | ");
    return s.length() > 400 ? s.substring(0, 400) + "..." : s;
  }
}
