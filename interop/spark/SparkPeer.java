// Spark side of the rpcenv <-> Spark interop check (see README.md in this directory).
//
// Built only against Apache Spark's own network-common classes (spark-network-common 4.3.0,
// module "rpc", no TLS), so that the Rust transport is checked against the real thing.
//
//   java -cp "build:<jars>/*" SparkPeer server [auth options] <port-file>
//   java -cp "build:<jars>/*" SparkPeer client [auth options] <port>
//
// Auth options (all or none; without them the connection is plaintext, as Spark with
// spark.authenticate=false):
//   --auth-secret <s>          the shared secret (spark.authenticate.secret)
//   --cipher <c>               spark.network.crypto.cipher: AES/CTR/NoPadding | AES/GCM/NoPadding
//   --engine-version <1|2>     spark.network.crypto.authEngineVersion
// With them, Spark's AuthEngine runs on every connection (what spark.authenticate=true with
// spark.network.crypto.enabled=true, saslFallback=false does inside Spark): the server has an
// AuthServerBootstrap, the client an AuthClientBootstrap, app id "sparkSaslUser" (the one
// NettyRpcEnv uses). The client then also runs the check "wrong_secret" first: a second
// client factory with another secret must be refused promptly, with an authentication error,
// before the real client connects.
//
// Echo protocol (implemented identically by examples/spark_interop.rs):
//   RPC "FAIL:<rest>"  -> failure whose text contains <rest>
//   RPC "__count__"    -> number of one-way messages received so far, ASCII decimal
//   RPC "__shutdown__" -> "bye", then the server exits 0
//   any other RPC      -> its own body
//   one-way message    -> increments the one-way counter
//   StreamRequest("/files/<name>") -> the file <name> of the server's stream directory: s0,
//                         s1, s1m, s64m (0 B, 1 B, 1 MiB, 64 MiB; byte i of a file of size n is
//                         streamByte(n, i)); anything else: Spark's "not found". This server
//                         serves them with a StreamManager of FileSegmentManagedBuffers (zero-copy
//                         FileRegions), the rpcenv server from its file server.

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReferenceArray;

import org.apache.spark.network.TransportContext;
import org.apache.spark.network.buffer.FileSegmentManagedBuffer;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.client.StreamCallback;
import org.apache.spark.network.client.RpcResponseCallback;
import org.apache.spark.network.client.TransportClient;
import org.apache.spark.network.client.TransportClientBootstrap;
import org.apache.spark.network.client.TransportClientFactory;
import org.apache.spark.network.crypto.AuthClientBootstrap;
import org.apache.spark.network.crypto.AuthServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.server.OneForOneStreamManager;
import org.apache.spark.network.server.RpcHandler;
import org.apache.spark.network.server.StreamManager;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.server.TransportServerBootstrap;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class SparkPeer {
  private static final String HOST = "127.0.0.1";
  /** Upper bound for every single wait in the client (per check). */
  private static final long CHECK_TIMEOUT_MS = 60_000;
  /** The server gives up (exit 1) if nobody asks it to shut down within this time. */
  private static final long SERVER_LIFETIME_MS = 10 * 60_000;

  private SparkPeer() {}

  /** The auth settings of both sides, or null for plaintext. */
  private static final class Auth {
    final String secret;
    final String cipher;
    final int engineVersion;

    Auth(String secret, String cipher, int engineVersion) {
      this.secret = secret;
      this.cipher = cipher;
      this.engineVersion = engineVersion;
    }

    Auth withSecret(String other) {
      return new Auth(other, cipher, engineVersion);
    }

    @Override
    public String toString() {
      return cipher + ", authEngineVersion " + engineVersion;
    }
  }

  private static final String USAGE =
      "usage: SparkPeer server [--auth-secret S --cipher C --engine-version V] <port-file>\n"
      + "       SparkPeer client [--auth-secret S --cipher C --engine-version V] <port>\n"
      + "  C: AES/CTR/NoPadding | AES/GCM/NoPadding, V: 1 | 2";

  private static int usage(String why) {
    System.err.println("SparkPeer: " + why + "\n" + USAGE);
    return 2;
  }

  public static void main(String[] args) throws Exception {
    System.exit(run(args));
  }

  private static int run(String[] args) throws Exception {
    if (args.length == 0 || !(args[0].equals("server") || args[0].equals("client"))) {
      return usage(args.length == 0 ? "missing mode" : "unknown mode '" + args[0] + "'");
    }
    String mode = args[0];
    String secret = null;
    String cipher = null;
    String version = null;
    List<String> positional = new ArrayList<>();
    for (int i = 1; i < args.length; i++) {
      String a = args[i];
      if (a.equals("--auth-secret") || a.equals("--cipher") || a.equals("--engine-version")) {
        if (i + 1 >= args.length) {
          return usage(a + " needs a value");
        }
        String v = args[++i];
        if (a.equals("--auth-secret")) {
          secret = v;
        } else if (a.equals("--cipher")) {
          cipher = v;
        } else {
          version = v;
        }
      } else if (a.startsWith("--")) {
        return usage("unknown option '" + a + "'");
      } else {
        positional.add(a);
      }
    }
    if (positional.size() != 1) {
      return usage(mode + ": expected exactly one "
          + (mode.equals("server") ? "port file" : "port"));
    }
    Auth auth = null;
    if (secret != null || cipher != null || version != null) {
      if (secret == null || cipher == null || version == null) {
        return usage("--auth-secret, --cipher and --engine-version go together");
      }
      if (secret.isEmpty()) {
        return usage("--auth-secret must not be empty");
      }
      if (!cipher.equals("AES/CTR/NoPadding") && !cipher.equals("AES/GCM/NoPadding")) {
        return usage("invalid cipher '" + cipher + "'");
      }
      if (!version.equals("1") && !version.equals("2")) {
        return usage("invalid engine version '" + version + "'");
      }
      auth = new Auth(secret, cipher, Integer.parseInt(version));
    }

    if (mode.equals("server")) {
      return runServer(Paths.get(positional.get(0)), auth);
    }
    int port;
    try {
      port = Integer.parseInt(positional.get(0));
      if (port <= 0 || port > 65535) {
        throw new NumberFormatException("out of range");
      }
    } catch (NumberFormatException e) {
      return usage("invalid port '" + positional.get(0) + "'");
    }
    return runClient(port, auth);
  }

  /** The app id Spark's NettyRpcEnv authenticates as (SecurityManager.getSaslUser()). */
  private static final String APP_ID = "sparkSaslUser";
  /** The client's wait for the server's answer to its challenge (spark.network.auth.rpcTimeout). */
  private static final String AUTH_TIMEOUT = "20s";

  private static TransportConf conf(Auth auth) {
    Map<String, String> m = new HashMap<>();
    // NIO keeps the JVM away from Netty's native epoll library; the wire format is identical.
    m.put("spark.rpc.io.mode", "NIO");
    m.put("spark.rpc.io.connectionTimeout", "60s");
    m.put("spark.rpc.io.connectionCreationTimeout", "30s");
    if (auth != null) {
      // What SparkConf holds with spark.authenticate=true and AuthEngine encryption on.
      // TransportConf reads the spark.network.crypto.* keys whatever the module; Spark's
      // SparkContext/NettyRpcEnv installs the bootstraps when spark.authenticate=true, and
      // here runServer/runClient do (it is not read by TransportConf).
      m.put("spark.authenticate", "true");
      m.put("spark.network.crypto.enabled", "true");
      m.put("spark.network.crypto.cipher", auth.cipher);
      m.put("spark.network.crypto.authEngineVersion", Integer.toString(auth.engineVersion));
      m.put("spark.network.crypto.saslFallback", "false");
      m.put("spark.network.auth.rpcTimeout", AUTH_TIMEOUT);
    }
    return new TransportConf("rpc", new MapConfigProvider(m));
  }

  /** One fixed secret for every app id, as SecurityManager answers. */
  private static SecretKeyHolder keyHolder(String secret) {
    return new SecretKeyHolder() {
      @Override
      public String getSaslUser(String appId) {
        return APP_ID;
      }

      @Override
      public String getSecretKey(String appId) {
        return secret;
      }
    };
  }

  private static TransportClientFactory clientFactory(TransportContext context, Auth auth) {
    if (auth == null) {
      return context.createClientFactory();
    }
    List<TransportClientBootstrap> bootstraps = new ArrayList<>();
    bootstraps.add(new AuthClientBootstrap(context.getConf(), APP_ID, keyHolder(auth.secret)));
    return context.createClientFactory(bootstraps);
  }

  // ---------------------------------------------------------------- server

  /** The stream files of both servers: name, size, check label. */
  private static final String[] STREAM_NAMES = {"s0", "s1", "s1m", "s64m"};
  private static final long[] STREAM_SIZES = {0, 1, 1 << 20, 64 << 20};
  private static final String[] STREAM_LABELS = {"0B", "1B", "1MiB", "64MiB"};

  /** Byte i of a stream file of size n (the same function as spark_interop.rs stream_byte). */
  static byte streamByte(long size, long i) {
    return (byte) ((i * 31 + (i >>> 9) + size) & 0xff);
  }

  /** Serves the files of a directory as "/files/<name>" (what Spark's NettyStreamManager does). */
  private static final class FileStreams extends StreamManager {
    private final Path dir;
    private final TransportConf conf;

    FileStreams(Path dir, TransportConf conf) {
      this.dir = dir;
      this.conf = conf;
    }

    @Override
    public ManagedBuffer getChunk(long streamId, int chunkIndex) {
      throw new UnsupportedOperationException();
    }

    @Override
    public ManagedBuffer openStream(String streamId) {
      if (!streamId.startsWith("/files/")) {
        return null;
      }
      String name = streamId.substring("/files/".length());
      if (name.isEmpty() || name.contains("/") || name.contains("..")) {
        return null;
      }
      File file = dir.resolve(name).toFile();
      return file.isFile() ? new FileSegmentManagedBuffer(conf, file, 0, file.length()) : null;
    }
  }

  private static final class EchoHandler extends RpcHandler {
    private final StreamManager streams;
    final AtomicLong oneWays = new AtomicLong();

    EchoHandler() {
      this(new OneForOneStreamManager());
    }

    EchoHandler(StreamManager streams) {
      this.streams = streams;
    }

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

  private static Path writeStreamFiles() throws Exception {
    Path dir = Files.createTempDirectory("spark-interop-streams");
    for (int f = 0; f < STREAM_NAMES.length; f++) {
      long size = STREAM_SIZES[f];
      byte[] bytes = new byte[(int) size];
      for (int i = 0; i < bytes.length; i++) {
        bytes[i] = streamByte(size, i);
      }
      Files.write(dir.resolve(STREAM_NAMES[f]), bytes);
    }
    return dir;
  }

  private static void deleteStreamFiles(Path dir) {
    for (String name : STREAM_NAMES) {
      dir.resolve(name).toFile().delete();
    }
    dir.toFile().delete();
  }

  private static int runServer(Path portFile, Auth auth) throws Exception {
    Path streamDir = writeStreamFiles();
    TransportConf transportConf = conf(auth);
    EchoHandler handler = new EchoHandler(new FileStreams(streamDir, transportConf));
    TransportContext context = new TransportContext(transportConf, handler);
    List<TransportServerBootstrap> bootstraps = new ArrayList<>();
    if (auth != null) {
      bootstraps.add(new AuthServerBootstrap(context.getConf(), keyHolder(auth.secret)));
    }
    TransportServer server = context.createServer(HOST, 0, bootstraps);
    int port = server.getPort();

    Path abs = portFile.toAbsolutePath();
    Path tmp = abs.resolveSibling(abs.getFileName() + ".tmp");
    Files.write(tmp, ascii(port + "\n"));
    Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    System.err.println("SparkPeer server: listening on " + HOST + ":" + port
        + (auth == null ? " (plaintext)" : " (AuthEngine, " + auth + ")"));

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
    deleteStreamFiles(streamDir);
    System.err.println("SparkPeer server: " + handler.oneWays.get() + " one-way messages received");
    return asked ? 0 : 1;
  }

  // ---------------------------------------------------------------- client

  private interface Check {
    /** Returns null on success, or why it failed. */
    String run(TransportClient client) throws Exception;
  }

  private static int runClient(int port, Auth auth) {
    int passed = 0;
    int failed = 0;
    if (auth != null) {
      // Before the real client: a client with another secret must be refused.
      String why;
      try {
        why = checkWrongSecret(port, auth);
      } catch (Throwable t) {
        why = oneLine(t);
      }
      if (why == null) {
        System.out.println("PASS wrong_secret");
        passed++;
      } else {
        System.out.println("FAIL wrong_secret: " + why);
        failed++;
      }
      System.out.flush();
    }

    TransportContext context = new TransportContext(conf(auth), new EchoHandler());
    TransportClientFactory factory = clientFactory(context, auth);
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
      for (int i = 0; i < STREAM_NAMES.length; i++) {
        final String name = STREAM_NAMES[i];
        final long size = STREAM_SIZES[i];
        names.add("stream_" + STREAM_LABELS[i]);
        checks.add(c -> checkStream(c, name, size));
      }
      names.add("stream_missing");
      checks.add(SparkPeer::checkStreamMissing);

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

  /** A refusal must come within this time, well under 10 s (a timeout takes AUTH_TIMEOUT). */
  private static final long WRONG_SECRET_BOUND_MS = 5_000;

  /**
   * A client factory whose secret differs from the server's: createClient must throw an
   * authentication error promptly (the server's RpcFailure, not a timeout), and the client
   * must not get a connection.
   */
  private static String checkWrongSecret(int port, Auth auth) {
    TransportContext context = new TransportContext(conf(auth), new EchoHandler());
    TransportClientFactory factory = clientFactory(context, auth.withSecret("not-" + auth.secret));
    try {
      long start = System.nanoTime();
      TransportClient client;
      try {
        client = factory.createClient(HOST, port);
      } catch (Throwable t) {
        long ms = (System.nanoTime() - start) / 1_000_000;
        for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
          if (c instanceof TimeoutException) {
            return "refused by a timeout after " + ms + " ms: " + oneLine(t);
          }
        }
        if (ms > WRONG_SECRET_BOUND_MS) {
          return "refused only after " + ms + " ms: " + oneLine(t);
        }
        // Spark's AuthClientBootstrap wraps the server's RpcFailure in RuntimeExceptions; its
        // text is the server's: "Authentication failed." from Spark and rpcenv alike. Anything
        // else (e.g. a connection closed without an answer) is not a refusal of the handshake.
        boolean refused = false;
        for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
          refused |= String.valueOf(c.getMessage()).contains("Authentication failed");
        }
        if (!refused) {
          return "createClient failed, but not with the server's \"Authentication failed\": "
              + oneLine(t);
        }
        String first = t.toString().split("\n", 2)[0].trim();
        System.out.println("    (wrong secret refused after " + ms + " ms: " + first + ")");
        return null;
      }
      client.close();
      return "createClient succeeded with a wrong secret";
    } finally {
      factory.close();
      context.close();
    }
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

  /** TransportClient.stream of one file, checked byte by byte as it arrives. */
  private static String checkStream(TransportClient client, String name, long size)
      throws Exception {
    CompletableFuture<String> result = new CompletableFuture<>();
    long[] position = {0};
    String[] bad = {null};
    client.stream("/files/" + name, new StreamCallback() {
      @Override
      public void onData(String streamId, ByteBuffer buf) {
        while (buf.hasRemaining()) {
          byte b = buf.get();
          if (bad[0] == null && position[0] < size && b != streamByte(size, position[0])) {
            bad[0] = "byte " + position[0] + " differs";
          }
          position[0]++;
        }
      }

      @Override
      public void onComplete(String streamId) {
        if (bad[0] != null) {
          result.complete(bad[0]);
        } else if (position[0] != size) {
          result.complete("got " + position[0] + " bytes, expected " + size);
        } else {
          result.complete(null);
        }
      }

      @Override
      public void onFailure(String streamId, Throwable cause) {
        result.complete("stream failed: " + oneLine(cause));
      }
    });
    return result.get(CHECK_TIMEOUT_MS, TimeUnit.MILLISECONDS);
  }

  /** A missing file: onFailure with the server's "not found" text. */
  private static String checkStreamMissing(TransportClient client) throws Exception {
    CompletableFuture<String> result = new CompletableFuture<>();
    client.stream("/files/missing", new StreamCallback() {
      @Override
      public void onData(String streamId, ByteBuffer buf) {
        result.complete("a missing file sent data");
      }

      @Override
      public void onComplete(String streamId) {
        result.complete("a missing file completed");
      }

      @Override
      public void onFailure(String streamId, Throwable cause) {
        String text = String.valueOf(cause.getMessage());
        result.complete(text.contains("Stream '/files/missing' was not found.")
            ? null : "not Spark's \"not found\": " + oneLine(cause));
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
