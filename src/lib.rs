//! rpcenv: a thread-based, synchronous RPC engine with the architecture of Apache Spark's
//! `NettyRpcEnv`, built on `mio` and plain threads instead of Netty and futures.
//!
//! Programs without an async runtime register endpoints by name in an [`RpcEnv`] and talk
//! to endpoints in other envs, on this machine or others, with blocking calls. The bytes
//! on the wire are framed as in Spark's `network-common` transport.
//!
//! ```
//! use rpcenv::{EndpointContext, RpcCallContext, RpcEndpoint, RpcEnv};
//!
//! struct Echo;
//! impl RpcEndpoint for Echo {
//!     type Message = String;
//!     fn receive_and_reply(
//!         &mut self,
//!         msg: String,
//!         reply: RpcCallContext,
//!         _ctx: &EndpointContext<Self::Message>,
//!     ) {
//!         reply.reply(format!("echo: {msg}"))
//!     }
//! }
//!
//! let server = RpcEnv::builder("server").bind_address("127.0.0.1").port(0).build()?;
//! server.setup_endpoint("echo", Echo)?;
//! let client = RpcEnv::builder("client").client_mode(true).build()?;
//! let echo = client.setup_endpoint_ref::<String>(&server.address().unwrap(), "echo")?;
//! assert_eq!(echo.ask_sync::<String>("hi".into())?, "echo: hi");
//! # client.shutdown();
//! # server.shutdown();
//! # Ok::<(), rpcenv::RpcError>(())
//! ```
//!
//! # The API at a glance
//!
//! | item | what it is |
//! |---|---|
//! | [`RpcEnv`], [`RpcEnvBuilder`] | an environment: endpoints by name, a listener (or client mode), connections |
//! | [`RpcEndpoint`], [`Threading`] | the trait user code implements (one message at a time, `&mut self`); where it runs |
//! | [`ConcurrentRpcEndpoint`] | the other kind (Spark's plain `RpcEndpoint`): `&self` handlers, several messages at once on the shared pool; [`RpcEnv::setup_concurrent_endpoint`] |
//! | [`EndpointContext`] | given to every handler, last: own reference, env, sender |
//! | [`RpcEndpointRef`] | a typed, serializable reference: `send`, `try_send`, `send_with_receipt`, `ask`, `ask_sync` |
//! | [`Pending`] | an ask under way: `wait`, `try_wait`, `wait_timeout`, `abort` |
//! | [`Receipt`] | what became of one one-way message: written, or why not |
//! | [`RpcCallContext`] | the way to answer one ask: `reply`, `send_failure` |
//! | [`RpcAddress`] | `host:port` of a server env |
//! | [`SharedBytes`] | a byte payload that, received, is a view of the frame it came in (no copy) |
//! | [`FileServer`] | files, jars and directories an env serves: [`RpcEnv::file_server`]; downloaded with [`RpcEnv::open_channel`] |
//! | [`RpcConf`] | string-keyed configuration, checked at `build()` |
//! | [`RpcError`] | every failure |
//! | [`RpcMetrics`] ([`EnvMetrics`], [`PeerMetrics`], [`EndpointMetrics`], [`HandlerTime`]) | what an env is doing: [`RpcEnv::metrics`], [`RpcMetrics::status_line`] |
//! | [`transport`] | the layer below: Spark frames over mio event loops; [`transport::AuthBootstrap`] authenticates and encrypts its connections |
//!
//! # Threads: who runs what
//!
//! | thread | count | runs |
//! |---|---|---|
//! | `rpc-boss` | 1 per server env | accepts connections |
//! | `rpc-io-N` | `rpc.io.threads` | reads and writes frames, reads request envelopes; never endpoint code |
//! | `rpc-dispatcher-N` | `rpc.dispatcher.numThreads` | handlers of shared endpoints, one message at a time per [`RpcEndpoint`], up to [`ConcurrentRpcEndpoint::max_concurrent`] (by default one per thread) at once per concurrent endpoint; decodes their messages |
//! | `rpc-endpoint-NAME` | 1 per dedicated endpoint | that endpoint's handlers only |
//! | `rpc-connect-N` | up to `rpc.connect.threads`, idle ones exit after 60 s | blocking connects for outboxes |
//! | `rpc-timeout` | 1 | fails asks at their deadlines |
//! | `rpc-metrics` | 1, with the cargo feature `metrics` | publishes [`RpcEnv::metrics`] to the `metrics` crate every `rpc.metrics.interval` |
//!
//! # What blocks
//!
//! Nothing waits for the network; a caller waits only for *room*, for an answer, or for
//! its own deadline, each bounded:
//!
//! - `send`, `ask` and `ask_timeout` hand the message over and return. A message to
//!   another env goes to its connection (or, while a `rpc-connect-N` thread connects,
//!   into that peer's outbox); a message to this env into the endpoint's inbox.
//! - **Room.** Every queue has a bound (see [Flow control](#flow-control)). A `send` or
//!   `ask` that finds its queue full waits on the calling thread for up to
//!   `rpc.io.sendTimeout` (an ask no longer than its own deadline), then fails with
//!   [`RpcError::QueueFull`] naming the queue, the bytes queued and the limit's key.
//!   [`RpcEndpointRef::try_send`] never waits. An endpoint sending to itself never waits
//!   (its inbox cannot drain while it does). An `rpc-io-N` thread never waits: a
//!   [`transport`] handler that sends on a full queue fails at once.
//! - `ask_sync`, `Pending::wait`, [`Receipt::wait`] and `setup_endpoint_ref*` block the
//!   caller until the answer, a failure, or the deadline. Do not call them from a handler
//!   for an ask to the same endpoint (it cannot answer while its handler waits), and avoid
//!   long waits on the shared pool: a blocked `rpc-dispatcher-N` thread serves no other
//!   endpoint. Give an endpoint that blocks [`Threading::Dedicated`].
//! - **Who reads an answer.** A connection's `rpc-io-N` event loop reads its socket,
//!   except while a thread blocked in `ask_sync`, `Pending::wait` (or a transport
//!   `send_rpc_sync`) waits for the answer to the connection's *only* outstanding
//!   request: that thread then takes the connection's read turn and reads the socket
//!   itself, so the answer wakes it straight from the kernel rather than through the
//!   loop (one thread hand-off less per round trip; gRPC core's synchronous calls poll
//!   on the waiting thread the same way), and the loop is not woken at all: its poller
//!   stops watching the socket for bytes until the turn is given back (two `epoll_ctl`
//!   calls per turn). While it holds the turn it hands every frame
//!   on exactly as the loop would (requests and one-way messages into inboxes, other
//!   answers to their askers; no endpoint code runs there), never waits for room to
//!   send, and gives the turn back as soon as its answer, a failure or its deadline
//!   comes; a close, a timeout or an abort wakes it at once. A connection with several
//!   requests outstanding is read by its loop. Each thread that does this keeps an
//!   epoll and an eventfd descriptor and a 16 KiB buffer for its lifetime;
//!   [`EnvMetrics::answers_read_by_callers`] counts the answers read this way.
//! - **Who reads a request.** The same read turn lets the server skip a hand-off (the
//!   leader/follower pattern): an `rpc-dispatcher-N` thread with nothing to do reads the
//!   connection it last answered a request on, rather than sleeping on its queue, for at
//!   most 10 s at a time. The next request on it then wakes that thread straight from the
//!   kernel; its read queues the endpoint's inbox, and the thread gives the turn back and
//!   runs the inbox itself (no other thread is woken for it), so endpoint code still runs
//!   only on dispatcher threads, never with the turn held. One dispatcher leads at a
//!   time; the others sleep on the queue as before, and work queued from elsewhere while
//!   none sleeps wakes the leader at once (through its poller's eventfd), as do a close
//!   and a shutdown. A dispatcher leads once per request it
//!   answered: a lead that ends without work is not tried again until it answers
//!   another. It does not lead when frames came in on the connection since its answer
//!   (a peer with several requests in flight: its loop reads them while the dispatchers
//!   handle them, which keeps reading off the dispatchers). Dedicated (`rpc-endpoint-NAME`) threads do not lead.
//!   [`EnvMetrics::dispatcher_read_turns`] counts the turns taken this way.
//! - **Who writes a frame.** A connection's `rpc-io-N` event loop owns its socket. A frame
//!   is written by the thread that hands it over when the connection is idle (nothing
//!   queued or being written, no burst, no pipeline: one non-blocking `writev`, so a lone
//!   ask or reply pays no hand-off); otherwise it is queued and the loop, woken once,
//!   writes everything queued; its poller watches the socket for room only while a write
//!   is left incomplete (Netty's `OP_WRITE`). Nothing is held back: a frame leaves at once or as soon as
//!   the loop runs, whatever any handler is doing, so a handler that asks another env from
//!   `receive_and_reply` or `on_start` gets its answer at once. Window grants and answers
//!   are never refused room.
//! - **Streams** (files served by [`RpcEnv::file_server`]). The server's `rpc-io-N`
//!   event loop reads a `StreamRequest`, opens the file, and writes the `StreamResponse`
//!   and then the file itself: with `sendfile` from the page cache on a plaintext
//!   connection, in sealed 256 KiB pieces on an encrypted one; at most 4 MiB per turn
//!   before its other connections, and it never waits: a full socket resumes on its
//!   writable event. The `StreamRequest` is written like any frame (by the caller of
//!   [`RpcEnv::open_channel`] when the connection is idle). The client's event loop puts
//!   the bytes into the [`transport::StreamReader`]'s buffer (at most
//!   `rpc.io.maxQueuedBytes`; when full, the connection is not read until the reader took
//!   half); the caller of `read` waits for bytes, at most `rpc.io.connectionTimeout` at a
//!   time. `open_channel` itself blocks while it connects.
//! - **Byte payloads.** The codec is the crate's own serde format (bincode 2's
//!   `standard()` bytes, bit for bit). A type that serializes as bytes
//!   (`serde_bytes::ByteBuf`, `#[serde(with = "serde_bytes")]`, `bytes::Bytes` with its
//!   `serde` feature) is copied in one go: once into the frame body when it is sent,
//!   once out of the received frame body when it is decoded, and no other time beyond
//!   what the kernel copies. Serde hands a `Vec<u8>` over element by element, which costs
//!   about 1 ns per byte each way (bincode's own serde path, used before, took 1.4 to
//!   3.6 ns; 16 MiB in one process, a loaded 2-core machine), ten times what bytes cost
//!   (0.1 ns): for large byte payloads use one of those types. In the workload bench
//!   (16 MiB and 4 KiB echoes, as a ratio to plain TCP in the same run) a `Vec<u8>` went
//!   from 0.06 to 0.11 of plain TCP to 0.11 to 0.27, bytes stayed at 0.2 to 0.85 (the
//!   machine was shared; ranges over alternating rounds). Both are the same bytes on the
//!   wire, so a field can change between `Vec<u8>` and `ByteBuf` without breaking older
//!   peers.
//! - **Payloads kept or forwarded.** A [`SharedBytes`] field is the same bytes on the
//!   wire, but a received one is not copied at all: it is a reference-counted view of the
//!   received frame body; sent to another env, one of 16 KiB or more is written to the
//!   socket from its own buffer, not copied into the frame (on an encrypted connection the
//!   cipher reads it from there). It keeps that whole frame in memory while it lives; copy a
//!   small part kept for long (`to_vec()`). Which to pick: `Vec<u8>` for small payloads;
//!   `ByteBuf` or `bytes::Bytes` for large ones read once; `SharedBytes` for large ones
//!   the receiver keeps, slices or sends on. W5 (a 16 MiB echo, as a ratio to plain TCP
//!   in the same run, 6 alternating rounds on a shared 2-core machine): `SharedBytes`
//!   0.66 to 0.86 (median 0.74), `ByteBuf` 0.52 to 0.97 (median 0.62), before the
//!   zero-copy send; with it, 16 rounds on a busier machine: `SharedBytes` 1.50x the
//!   MB/s of the build before (see the README).
//! - `shutdown` waits up to five seconds for endpoints to run `on_stop` and for threads
//!   to exit (a connect under way included), then leaves busy ones behind and logs them
//!   by name: only threads really busy (idle pool threads get a moment to exit even when
//!   a busy dedicated endpoint used up the five seconds).
//!
//! # Flow control
//!
//! Memory stays bounded when a peer is slow or hostile, and nothing is dropped to get
//! there; the pressure reaches the producer:
//!
//! | queue | bound | at the bound |
//! |---|---|---|
//! | a connection's frames ready to write | `rpc.io.maxQueuedBytes` (4 MiB) | senders wait (above); answers and control frames go anyway |
//! | messages to one endpoint of a peer beyond its window | `rpc.io.maxQueuedBytes` per endpoint | held in order on the sender, which waits beyond the bound; other endpoints and answers go on |
//! | a peer's outbox while connecting | `rpc.io.maxQueuedBytes` | senders wait for the connect |
//! | an endpoint's inbox, per connection | `rpc.dispatcher.inboxCapacity` (4 MiB) | the peer's window: it sends no more until the endpoint takes messages out |
//! | an endpoint's inbox, from this env's threads | `rpc.dispatcher.inboxCapacity` | senders wait (above) |
//! | a download's bytes not yet read ([`transport::StreamReader`]) | `rpc.io.maxQueuedBytes` | the connection is not read until the reader took half |
//! | files a peer asked for and not yet sent | 64 per connection (and `rpc.io.maxQueuedBytes` of answers) | the peer's requests are not read until they are sent |
//! | large frame buffers kept for reuse | 64 MiB per env, buffers of 1 MiB or more | a buffer given back beyond it is freed |
//!
//! The last row is memory an env keeps while it lives, as Netty's pooled allocator keeps
//! its chunks: the buffer of a frame body of 1 MiB or more (one encoded to send once it
//! is written, one received once its message is decoded and the last [`SharedBytes`]
//! view of it dropped) goes back to the env's pool and is lent to the next large frame
//! that fits it (at most twice that frame's size), whose pages are then already mapped;
//! otherwise each 16 MiB frame would fault in and zero 4,096 fresh pages.
//! [`EnvMetrics::buffers_reused`] counts the buffers lent. A peer's claimed frame length
//! still allocates nothing: a body being read takes a buffer the pool already holds, or
//! grows as its bytes arrive.
//!
//! Between envs every connection speaks a window protocol (the HTTP/2 way, with endpoints
//! as streams): each side says hello with the window its endpoints grant, a message costs
//! its frame body plus 256 bytes (for the structures that hold it) of its endpoint's window, and the receiver grants the
//! window back as the endpoint takes messages out of its inbox. A receiver therefore never
//! stops reading an rpcenv peer, answers always flow, and two envs whose handlers ask each
//! other while both are flooded do not stall each other. A peer that does not speak it (a
//! raw socket, a foreign client) is held to the same windows by TCP itself: once it has a
//! window's worth waiting in an inbox, is owed 64 answers, or its unread answers (with
//! those owed, at the size its answers had so far) reach `rpc.io.maxQueuedBytes`, its
//! connection is no longer read until that clears. A peer that said hello but leaves its
//! answers unread (so that they fill the queue and the socket takes nothing for 250 ms)
//! is no longer read either, and any peer that reads nothing for
//! `rpc.io.connectionTimeout` while frames wait is closed. A
//! handler that sends to an endpoint whose handler sends back to it, both at their
//! bounds, deadlocks as in any system of bounded mailboxes: the sends fail with
//! `QueueFull` after `rpc.io.sendTimeout` instead of hanging.
//!
//! # Liveness
//!
//! A peer that vanishes (a host that lost power, a cut link) is noticed by TCP keep-alive
//! while the connection is quiet (`rpc.io.keepAliveIdle` 5 s, `rpc.io.keepAliveInterval`
//! 2 s) and by `rpc.io.tcpUserTimeout` (10 s) while sent data waits for its
//! acknowledgement: within about 11 s by default, within 2 s with `1s`/`1s`/`1500ms`. Both
//! work with any peer, Spark included; Linux applies the user timeout to a peer that
//! reads nothing while data waits for it too. The connection then closes: outstanding asks fail
//! with [`RpcError::Connection`] naming the peer, and the endpoints get `on_disconnected`
//! (after `on_network_error` when the socket reports the failure). `rpc.io.connectionTimeout` keeps Spark's meaning (the connect
//! timeout, and a peer silent that long while a request without a deadline of its own
//! waits); it counts only the peer's silence, and never cuts an ask short of its own
//! deadline. An inbound connection that sends no whole frame within
//! `rpc.io.frameTimeout` of connecting, or any connection stalled that long in the middle
//! of a frame, or trickling a frame slower than 64 KiB/s once it has taken that long, is
//! closed; `rpc.io.maxConnections` caps the inbound connections. (A peer that sends whole
//! frames now and then can hold a connection as long as it likes: authentication, not a
//! timeout, is what keeps strangers from holding every slot.)
//!
//! # Guarantees and failures
//!
//! - Messages from one sender to one endpoint are handled in the order they were sent;
//!   an endpoint handles one message at a time: `on_start` first, `on_stop` last, once.
//! - A [`ConcurrentRpcEndpoint`] handles up to one message per `rpc-dispatcher-N` thread
//!   at once (at most [`max_concurrent`](ConcurrentRpcEndpoint::max_concurrent)), in no
//!   promised order, not even per sender; `on_start` runs first and alone, `on_stop`
//!   last, once and alone, after every running handler returned (`stop` returns at once
//!   and `on_stop` follows; shutdown waits for it within its deadline). Flow control, `QueueFull`, the type checks
//!   and local moves are those of any endpoint. Pick it for stateless or internally
//!   synchronized handlers of independent requests from many callers; keep
//!   [`RpcEndpoint`] where a message changes state or order matters.
//! - Every ask ends exactly once: its reply; [`RpcError::Remote`] (the endpoint called
//!   `send_failure`, or panicked); [`RpcError::NoReply`] at once if the endpoint dropped
//!   the call context; [`RpcError::Connection`] naming the peer at once if the connect
//!   fails or the connection closes with the ask outstanding (including when the peer
//!   vanished, see [Liveness](#liveness)); [`RpcError::QueueFull`] if it found no room in
//!   time; [`RpcError::EnvStopped`] at once when this env shuts down (a peer that shuts
//!   down closes the connection: `Connection`, or `EnvStopped` if its endpoints were
//!   already gone); or [`RpcError::Timeout`] at its deadline, naming the duration and the
//!   key (or argument) that set it.
//! - Nothing is retried: an ask is sent once. A message queued while connecting whose
//!   connect fails is failed back (asks) or counted as lost and logged at `warn` once for
//!   the lot (one-way messages). After a failed connect, messages to that peer fail at once
//!   with the same error for 500 ms, twice as long after each further failure in a row (up
//!   to 8 s); the next message after that connects again.
//! - A one-way message whose failure is already known fails at once: this env stopped,
//!   the endpoint is unknown or stopped, the frame is over `rpc.message.maxSize` (checked
//!   before any connection exists), the peer failed recently. One accepted and then lost
//!   with its connection (never written before the close) is counted and logged at `warn`
//!   once per incident; [`RpcEndpointRef::send_with_receipt`] gives a [`Receipt`] that
//!   tells when it was written, or why it never will be.
//! - After a peer ends its side of a connection, the answers to what it sent before still
//!   go out; then the connection closes. A closed connection lets go of its socket at
//!   once, whatever still holds a reference to it.
//! - A panic in endpoint code, or in the `Deserialize` of its messages, is caught and given
//!   to [`RpcEndpoint::on_error`] (or [`ConcurrentRpcEndpoint::on_error`]); the endpoint
//!   and the env keep running.
//! - Local calls (same env) never touch a socket; a message or reply of the type the
//!   other side expects is moved, not serialized.
//! - Bytes from the network are untrusted: a frame is checked against
//!   `rpc.message.maxSize` before anything is allocated for it, a message or reply
//!   that does not decode is an [`RpcError::Decode`], never a panic, and nothing a peer
//!   merely claims is allocated or looped over: nesting stops at 256 levels, and one
//!   message holds at most 2^20 (plus one per byte) elements that take no bytes (a
//!   `Vec<()>` claiming 2^60 elements is a `Decode` error, not a 2^60-turn loop).
//! - A reference to an endpoint of a client-mode env is bound, when it is received, to
//!   the connection it came over; forwarded on to a third env it does not work there.
//!
//! # Metrics
//!
//! [`RpcEnv::metrics`] returns an [`RpcMetrics`]: per peer socket address (connections,
//! bytes and frames in and out, bytes queued, asks in flight, last activity), per
//! endpoint (inbox depth and its high-water mark, messages handled and a log2
//! histogram of their handler times, panics, asks answered, failed and dropped) and for
//! the env (totals, asks in flight, timeouts by the key that set them, connects and
//! their failures, one-way messages lost, what peers sent that was refused, by kind,
//! failed authentications). [`RpcMetrics::status_line`] makes one compact line of it for
//! a log. Each figure is counted where it happens, by what it counts (a connection, an
//! inbox, the env), with relaxed atomics or under a lock that path holds anyway; only
//! the snapshot takes the registries' locks. Their cost, measured: see the README,
//! "Operating rpcenv".
//!
//! With the cargo feature **`metrics`**, each env also publishes the same figures
//! through the [`metrics`](https://docs.rs/metrics) facade (names `rpcenv_*`, labels
//! `env`, `peer`, `endpoint`) every `rpc.metrics.interval` (10 s) from an `rpc-metrics`
//! thread, and once more when it stops: install any recorder
//! (`metrics-exporter-prometheus`, ...) and they appear there (`examples/prometheus.rs`).
//!
//! **Logs a peer cannot flood.** Every `warn` line caused by what a peer sends (a frame
//! that does not decode, an answer to no outstanding request, a message for an unknown
//! endpoint, a message that does not decode as the endpoint's type, a failed
//! authentication, a peer stalled mid-frame) is counted in
//! [`EnvMetrics::frames_rejected`] by kind, and logged for the first 5 of each kind
//! from each peer host; after that at most one line per 10 s for that host and kind,
//! saying how many were suppressed.
//!
//! # Checked types
//!
//! The message type is fixed by the reference (`RpcEndpointRef<M>`), the reply type is
//! chosen at each ask (`ask_sync::<R>`), and the codec (bincode's format) is positional: bytes of
//! one type often decode as another (an `Option<String>` of `None` as `false`, as `0u64`,
//! as `""`). So neither is left to the codec:
//!
//! - **Lookups.** `setup_endpoint_ref::<M>` asks the other env whether the endpoint
//!   exists *and takes `M`*; one that takes another type fails at once with
//!   [`RpcError::MessageType`] naming both types (`endpoint rpc://kv@… takes messages of
//!   type KvMsg, not CounterMsg: …`).
//! - **Messages.** Every request carries a fingerprint of its message type; an endpoint
//!   refuses one of another type (e.g. through an old reference to a name another
//!   endpoint has taken since) with `MessageType`: the asker gets it, a one-way message's
//!   endpoint gets it in [`RpcEndpoint::on_error`] (the env logs such a message once, at
//!   `warn`; the default `on_error` adds a `debug` line only).
//! - **Errors are logged once.** An error returned to the caller (a failed connect, say)
//!   is not also logged by the library at `warn` (only at `debug`): the caller decides.
//! - **Replies.** Every ask carries a fingerprint of the reply type it expects;
//!   [`RpcCallContext::reply`] with a value of another type sends no value but an error,
//!   and the asker gets [`RpcError::Decode`] naming both (`cannot decode the reply of
//!   endpoint kv at 127.0.0.1:7077 as bool: the endpoint replied with Option<String>, the
//!   ask expected bool`). A local ask checks the same rule without the fingerprint.
//!
//! **What is compared**: a type's name as [`std::any::type_name`] spells it, with every
//! module path left out (`core::option::Option<alloc::string::String>` is
//! `Option<String>`, `my_proto::KvMsg` is `KvMsg`) and every reference named as the
//! owned type it serializes as (`&str` as `String`, `&[T]` as `Vec<T>`, `&T` as `T`, so
//! `reply.reply("pong")` answers an ask for a `String`); the fingerprint is the 64-bit
//! FNV-1a hash of that name. **Limits**: a type moved to another module or crate, or a copy of
//! the enum in each of two programs, still matches (the name is the protocol); two
//! different types of the same name match too (then the codec decides, and a failure is
//! a `Decode` error naming the type). The shape is not compared: what changes of one type
//! stay compatible is below. `type_name` is best effort: builds made by different compiler
//! versions may spell a name differently (rarely for plain types; closures, `dyn` and
//! lifetimes are not promised), and then do not match; build both sides with the same
//! toolchain when in doubt. A peer that sends a fingerprint of 0 (a hand-written client)
//! makes no claim and is not checked. **Cost**: 16 bytes more in every request envelope,
//! a compare on each side, and a per-thread cache lookup of the fingerprint (the name is
//! hashed once per type and thread); nothing in replies. Measured with the workload
//! bench against the build before the check, alternating rounds on a 2-core machine with
//! the process on one CPU: W1 p50 1.00x (10 rounds), W2 0.99x (20 rounds, medians); W2
//! on both cores varies by a third from run to run there, far more than that.
//!
//! # Compatible changes to a message type
//!
//! Peers built at different times interoperate as long as the types they exchange keep
//! their name and their bincode layout for the values actually sent:
//!
//! | change | compatible? |
//! |---|---|
//! | append a variant to an enum | yes, for the old variants; the new one sent to an old peer is a `Decode` error naming the type and the endpoint |
//! | reorder, insert or remove variants | no: a variant is sent as its index |
//! | add, remove or reorder fields of a variant or struct | no: fields are positional (there is no `#[serde(default)]` for a missing field in a positional format) |
//! | change a field's type | only between types with the same encoding: widening an integer (`u32` to `u64`, both varints), `Vec<u8>` ⇄ `serde_bytes::ByteBuf` ⇄ [`SharedBytes`] (all length, then bytes) |
//! | rename the type (or a reply type) | no: lookups and asks fail with `MessageType` or a `Decode` error naming both names |
//! | move it to another module or crate | yes |
//! | `#[serde(skip_serializing_if)]`, `untagged`, `flatten`, `deserialize_any` | not supported by the codec |
//!
//! # Security
//!
//! Without `rpc.authenticate` anyone who can reach a server env's port can call its
//! endpoints, and bytes cross the network in clear. With it, every connection first runs
//! Spark 4.x's `AuthEngine` handshake over a shared secret (`rpc.authenticate.secret`,
//! `.secret.file` or `.secret.env`): the connecting thread (`rpc-connect-N`) runs the
//! client side before anyone else uses the connection; the server's event loop answers
//! the first frame, and its endpoints hear nothing of a peer (no message, no
//! `on_connected`) before that peer authenticated. With `rpc.io.encryption.enabled`
//! every byte after the handshake is encrypted (`rpc.io.encryption.cipher`: AES-GCM,
//! authenticated, by default; AES-CTR as Spark's default), by the thread that writes and
//! the event loop that reads. Without encryption the client also confirms the handshake
//! with a 32-byte proof that it holds the keys (rpcenv's own frame: Spark's `AuthEngine`
//! always encrypts), so a challenge seen on the network cannot be replayed on another
//! connection; the frames after it are still plain and unprotected, so use encryption
//! wherever the network is not trusted. A wrong secret or app id, a tampered handshake or GCM
//! envelope, or two sides whose cipher or engine version differ (neither is negotiated on
//! the wire) fail with [`RpcError::Auth`] naming the peer, promptly; a peer that has not
//! authenticated within `rpc.authenticate.timeout` is closed. The secret and key material
//! appear in no error, log line or `Debug` output, and keys are wiped when dropped. See
//! [`transport::AuthBootstrap`] for the settings Spark needs to match.
//!
//! # Layers
//!
//! | layer | what it knows |
//! |---|---|
//! | frame (private) | Spark frames ⇄ bytes; an incremental decoder; no I/O |
//! | auth (private) | Spark's `AuthEngine` handshake and the AES-CTR / AES-GCM channel ciphers; bytes in, bytes out, no I/O |
//! | [`transport`] | sockets, event loops, requests and their answers; no endpoints |
//! | rpc (private, re-exported above) | envs, endpoints, envelopes, timeouts; no sockets |
//! | codec (private) | values ⇄ bytes: the crate's own serde `Serializer` and `Deserializer` for bincode 2.0.1's `standard()` format |

#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod auth;
mod buffer_pool;
mod codec;
mod conf;
mod error;
mod fnv;
mod frame;
mod log_limit;
mod metrics;
mod rpc;
mod sync;
mod threads;
pub mod transport;

pub use crate::codec::SharedBytes;
pub use crate::conf::RpcConf;
pub use crate::error::RpcError;
pub use crate::metrics::{
    EndpointKind, EndpointMetrics, EnvMetrics, HANDLER_TIME_BUCKETS, HandlerTime, PeerMetrics,
    RpcMetrics,
};
pub use crate::rpc::{
    ConcurrentRpcEndpoint, EndpointContext, FileServer, Pending, Receipt, RpcAddress,
    RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcEnvBuilder, Threading,
};
/// What [`RpcEnv::open_channel`] returns: a blocking [`std::io::Read`] of a download.
pub use crate::transport::StreamReader;
