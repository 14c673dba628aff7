//! W8 of `BENCH.md`: download a file served from the page cache (1 GiB; 128 MiB with
//! `--quick`) with `RpcEnv::open_channel` from an env's file server, beside plain TCP
//! (`std::io::copy` from the file to a socket, which Linux turns into `sendfile`) in the
//! same run. The plain client reads the socket 256 KiB at a time (the largest read of
//! rpcenv's event loop); the rpcenv client reads its `StreamReader` 64 KiB at a time. Rounds alternate between the two;
//! the medians are reported, with the peak RSS growth of the process (server and client)
//! during the rpcenv downloads (`/proc/self/clear_refs` resets the peak before each).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use rpcenv::{RpcConf, RpcEnv};

/// The size of the reads of the rpcenv client from its `StreamReader`.
const READ: usize = 64 << 10;

/// The size of the plain client's socket reads: the largest piece rpcenv's event loop
/// reads from the socket at once (256 KiB), so neither side makes more system calls.
const PLAIN_READ: usize = 256 << 10;

/// Runs W8 and prints its lines; `Err` names what failed.
pub(crate) fn run(quick: bool, io_threads: usize) -> Result<(), String> {
    let size: u64 = if quick { 128 << 20 } else { 1 << 30 };
    let rounds = if quick { 2 } else { 5 };
    let dir = std::env::temp_dir().join(format!("rpcenv-w8-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("W8: {e}"))?;
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("w8.bin");
    write_file(&path, size).map_err(|e| format!("W8: cannot write {}: {e}", path.display()))?;
    // Into the page cache.
    let mut sink = vec![0; READ];
    let mut file = File::open(&path).map_err(|e| format!("W8: {e}"))?;
    while file.read(&mut sink).map_err(|e| format!("W8: {e}"))? > 0 {}

    let conf = RpcConf::new().set("rpc.io.threads", io_threads.to_string());
    let server = RpcEnv::builder("w8-server")
        .bind_address("127.0.0.1")
        .port(0)
        .conf(conf.clone())
        .build()
        .map_err(|e| format!("W8: {e}"))?;
    let uri = server
        .file_server()
        .add_file(&path)
        .map_err(|e| format!("W8: {e}"))?;
    let client = RpcEnv::builder("w8-client")
        .client_mode(true)
        .conf(conf)
        .build()
        .map_err(|e| format!("W8: {e}"))?;

    let mut plain = Vec::new();
    let mut rpcenv = Vec::new();
    let mut growth = Vec::new();
    // One warm-up download each (connections, allocator), not counted.
    plain_download(&path, size)?;
    rpcenv_download(&client, &uri, size)?;
    for _ in 0..rounds {
        plain.push(plain_download(&path, size)?);
        let base = rss_kib("VmRSS:");
        reset_peak();
        rpcenv.push(rpcenv_download(&client, &uri, size)?);
        let peak = rss_kib("VmHWM:");
        if let (Some(base), Some(peak)) = (base, peak) {
            growth.push(peak.saturating_sub(base) as f64 / 1024.0);
        }
    }
    client.shutdown();
    server.shutdown();

    let plain_mb = median(&mut plain);
    let rpcenv_mb = median(&mut rpcenv);
    let mib = size >> 20;
    println!("W8 system=plain-tcp file_MiB={mib} rounds={rounds} MB_s={plain_mb:.0}");
    match median_opt(&mut growth) {
        Some(growth) => println!(
            "W8 system=rpcenv file_MiB={mib} rounds={rounds} MB_s={rpcenv_mb:.0} \
             rss_growth_MiB={growth:.1}"
        ),
        None => println!("W8 system=rpcenv file_MiB={mib} rounds={rounds} MB_s={rpcenv_mb:.0}"),
    }
    println!(
        "W8 ratio rpcenv/plain-tcp MB_s={:.2} (target >= 0.85; per round: {})",
        rpcenv_mb / plain_mb,
        rpcenv
            .iter()
            .zip(&plain)
            .map(|(r, p)| format!("{:.2}", r / p))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// Removes the bench's directory.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A file of `size` bytes of a pattern (not zeros, not sparse).
fn write_file(path: &Path, size: u64) -> io::Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    let mut file = io::BufWriter::new(File::create(path)?);
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()
}

/// MB/s of one plain-TCP download: a server thread `io::copy`s the file to the socket.
fn plain_download(path: &Path, size: u64) -> Result<f64, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("W8 plain: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("W8 plain: {e}"))?;
    let path = path.to_path_buf();
    let server = thread::Builder::new()
        .name("w8-plain-server".into())
        .spawn(move || -> io::Result<u64> {
            let (mut socket, _) = listener.accept()?;
            socket.set_nodelay(true)?;
            let mut file = File::open(&path)?;
            io::copy(&mut file, &mut socket)
        })
        .map_err(|e| format!("W8 plain: {e}"))?;
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).map_err(|e| format!("W8 plain: {e}"))?;
    let mut buf = vec![0; PLAIN_READ];
    let mut got = 0u64;
    loop {
        let n = socket
            .read(&mut buf)
            .map_err(|e| format!("W8 plain: {e}"))?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let took = started.elapsed();
    let sent = server
        .join()
        .map_err(|_| "W8 plain: the server panicked".to_owned())?
        .map_err(|e| format!("W8 plain server: {e}"))?;
    if got != size || sent != size {
        return Err(format!(
            "W8 plain: {got} bytes read, {sent} sent, {size} expected"
        ));
    }
    Ok(size as f64 / 1e6 / took.as_secs_f64())
}

/// MB/s of one rpcenv download with `open_channel`.
fn rpcenv_download(client: &RpcEnv, uri: &str, size: u64) -> Result<f64, String> {
    let started = Instant::now();
    let mut reader = client
        .open_channel(uri)
        .map_err(|e| format!("W8 rpcenv: {e}"))?;
    let mut buf = vec![0; READ];
    let mut got = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("W8 rpcenv: {e}"))?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let took = started.elapsed();
    if got != size {
        return Err(format!("W8 rpcenv: {got} bytes read, {size} expected"));
    }
    Ok(size as f64 / 1e6 / took.as_secs_f64())
}

/// A line of `/proc/self/status` in KiB (`VmRSS:`, `VmHWM:`).
fn rss_kib(key: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak RSS (`VmHWM`) to the current RSS (Linux 4.0+).
fn reset_peak() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

fn median(values: &mut [f64]) -> f64 {
    median_opt(values).unwrap_or(0.0)
}

fn median_opt(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[sorted.len() / 2])
}
