//! rpcenv's metrics in Prometheus' text format, through the `metrics` facade: no code of
//! rpcenv's knows Prometheus; the recorder is `metrics-exporter-prometheus`'s.
//!
//! ```text
//! cargo run --example prometheus --features metrics            # print once and exit
//! cargo run --example prometheus --features metrics -- --serve 127.0.0.1:9898
//! ```
//!
//! With `--serve ADDR` it answers every HTTP request on ADDR with the current text
//! (plain `std::net::TcpListener`, one request at a time) until Ctrl-C; point
//! Prometheus (or `curl`) at it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use rpcenv::{EndpointContext, RpcCallContext, RpcConf, RpcEndpoint, RpcEnv};

struct Echo;

impl RpcEndpoint for Echo {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        msg: String,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(msg)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = match std::env::args().nth(1).as_deref() {
        None => None,
        Some("--serve") => Some(std::env::args().nth(2).ok_or("--serve needs an address")?),
        Some(other) => return Err(format!("unknown argument {other:?}; try --serve ADDR").into()),
    };
    // The recorder, installed for the whole process; `handle.render()` gives the text.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;

    let conf = RpcConf::new().set("rpc.metrics.interval", "1s");
    let server = RpcEnv::builder("server").conf(conf.clone()).build()?;
    server.setup_endpoint("echo", Echo)?;
    let client = RpcEnv::builder("client")
        .client_mode(true)
        .conf(conf)
        .build()?;
    let echo = client.setup_endpoint_ref::<String>(&server.address().unwrap(), "echo")?;
    for i in 0..1000 {
        echo.ask_sync::<String>(format!("message {i}"))?;
    }
    eprintln!("server: {}", server.metrics().status_line());
    eprintln!("client: {}", client.metrics().status_line());

    let Some(addr) = serve else {
        // Wait for a publication (every rpc.metrics.interval) that has every ask, at most
        // 10 s, then print the text.
        let handled = server
            .metrics()
            .endpoints
            .iter()
            .find(|e| e.name == "echo")
            .map_or(0, |e| e.messages_handled);
        let line = format!(
            "rpcenv_endpoint_messages_handled_total{{env=\"server\",endpoint=\"echo\"}} {handled}\n"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !handle.render().contains(&line) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        print!("{}", handle.render());
        client.shutdown();
        server.shutdown();
        return Ok(());
    };
    let listener = TcpListener::bind(&addr)?;
    eprintln!("serving the metrics on http://{addr}/metrics (Ctrl-C stops)");
    for stream in listener.incoming() {
        let mut stream = stream?;
        // Read the request line and headers, whatever they ask: there is one page.
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            line.clear();
        }
        echo.ask_sync::<String>("scraped".into())?;
        let body = handle.render();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}
