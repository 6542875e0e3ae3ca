//! A TCP proxy in front of the real server, on OS threads (so every runtime's tests can use
//! it): it records both directions of every connection in the order it passed them (a
//! transcript the protocol model can replay), and can hold the server's replies back for a
//! while (a slow network, or a busy server, as the client sees it).
//!
//! The recorded order respects causality: a client's bytes are recorded before they are
//! forwarded (so before the server can answer them), a server's bytes before they are
//! forwarded (so before the client can react to them).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One read from one side, as the proxy passed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes the client wrote.
    Client(Vec<u8>),
    /// Bytes the server wrote.
    Server(Vec<u8>),
}

/// A running proxy; it stops accepting when dropped (open connections run on until either
/// side closes).
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<Chunk>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free local port and forwards every connection to `upstream`
    /// (`host:port`), holding each chunk of the server's replies back by `delay`.
    pub fn start(upstream: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port for the proxy");
        let port = listener.local_addr().expect("bound").port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    pump(
                        &client,
                        &server,
                        Arc::clone(&log),
                        Duration::ZERO,
                        Chunk::Client,
                    );
                    pump(&server, &client, Arc::clone(&log), delay, Chunk::Server);
                }
            });
        }
        Self { port, log, stop }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything passed so far, on every connection (tests use one connection per proxy).
    pub fn transcript(&self) -> Vec<Chunk> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` on a thread of its own, recording each chunk.
fn pump(
    from: &TcpStream,
    to: &TcpStream,
    log: Arc<Mutex<Vec<Chunk>>>,
    delay: Duration,
    side: fn(Vec<u8>) -> Chunk,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0_u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !delay.is_zero() {
                // Simulated latency, not synchronisation: the client waits for these bytes.
                std::thread::sleep(delay);
            }
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(side(buf[..n].to_vec()));
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Writes a transcript in the format the protocol model's unit tests read: per chunk, `C`
/// or `S`, a big-endian `u32` length, the bytes.
pub fn encode(transcript: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in transcript {
        let (side, bytes) = match chunk {
            Chunk::Client(b) => (b'C', b),
            Chunk::Server(b) => (b'S', b),
        };
        out.push(side);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}
